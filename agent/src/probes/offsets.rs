//! Resolves [`KernelOffsets`] for the running kernel from its BTF.

use agent_common::KernelOffsets;

use super::btf::{Btf, BtfError};

/// Every field the programs read: (struct, field path, size in bytes, where it goes).
type Setter = fn(&mut KernelOffsets, u32);
const FIELDS: &[(&str, &str, u32, Setter)] = &[
    ("task_struct", "files", 8, |o, v| o.task_files = v),
    ("files_struct", "fdt", 8, |o, v| o.files_fdt = v),
    ("fdtable", "max_fds", 4, |o, v| o.fdtable_max_fds = v),
    ("fdtable", "fd", 8, |o, v| o.fdtable_fd = v),
    ("file", "f_inode", 8, |o, v| o.file_f_inode = v),
    ("file", "private_data", 8, |o, v| o.file_private_data = v),
    ("inode", "i_mode", 2, |o, v| o.inode_i_mode = v),
    ("socket", "type", 2, |o, v| o.socket_type = v),
    ("socket", "sk", 8, |o, v| o.socket_sk = v),
    ("sock", "__sk_common.skc_family", 2, |o, v| o.skc_family = v),
    ("sock", "__sk_common.skc_daddr", 4, |o, v| o.skc_daddr = v),
    ("sock", "__sk_common.skc_rcv_saddr", 4, |o, v| {
        o.skc_rcv_saddr = v;
    }),
    ("sock", "__sk_common.skc_dport", 2, |o, v| o.skc_dport = v),
    ("sock", "__sk_common.skc_num", 2, |o, v| o.skc_num = v),
    ("sock", "__sk_common.skc_state", 1, |o, v| o.skc_state = v),
    ("sock", "__sk_common.skc_v6_daddr", 16, |o, v| {
        o.skc_v6_daddr = v;
    }),
    ("sock", "__sk_common.skc_v6_rcv_saddr", 16, |o, v| {
        o.skc_v6_rcv_saddr = v;
    }),
    ("sock", "sk_protocol", 2, |o, v| o.sk_protocol = v),
    ("tcp_sock", "write_seq", 4, |o, v| o.tcp_write_seq = v),
    ("tcp_sock", "copied_seq", 4, |o, v| o.tcp_copied_seq = v),
    ("tcp_sock", "snd_nxt", 4, |o, v| o.tcp_snd_nxt = v),
    ("sock", "__sk_common.skc_net.net", 8, |o, v| o.skc_net = v),
    ("net", "ns.inum", 4, |o, v| o.net_ns_inum = v),
];

/// Looks every field up; the first one missing names itself in the error.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let mut offsets = KernelOffsets::default();
    for (strukt, path, size, set) in FIELDS {
        set(&mut offsets, btf.field_offset(strukt, path, *size)?);
    }
    offsets.ready = 1;
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a host with BTF (every machine sockspan supports), every field resolves, and the ones
    /// whose position the kernel fixes by design land where they must.
    #[test]
    fn resolves_the_running_kernel() {
        let Ok(btf) = Btf::from_kernel() else {
            panic!(
                "this host has no {} — sockspan needs BTF",
                super::super::btf::VMLINUX_BTF
            );
        };
        let offsets = resolve(&btf).expect("all fields resolve");
        assert_eq!(offsets.ready, 1);
        // struct sock starts with struct sock_common, whose first member holds the addresses.
        assert!(offsets.skc_daddr < 8 && offsets.skc_rcv_saddr < 8);
        assert_ne!(offsets.skc_v6_daddr, offsets.skc_v6_rcv_saddr);
        assert!(offsets.task_files > 0 && offsets.socket_sk > 0);
    }
}
