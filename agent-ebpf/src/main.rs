//! sockspan's eBPF programs: socket syscalls seen from the raw `sys_enter`/`sys_exit` tracepoints,
//! or from the socket layer's own tracepoints (`socket_layer`).
//!
//! Tracepoints are the hook that holds on every kernel this agent targets (kprobes may be absent,
//! fentry refused); the raw syscall ones, attached by BTF, are the cheapest of them. The programs resolve each fd to its kernel socket with offsets user space read
//! from BTF (see `agent_common::KernelOffsets`), keep a table of tracked sockets, and stream
//! connection and data records through one ring buffer. Regular files, pipes and non-inet sockets
//! produce nothing.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// One `asm!` block (the exit dispatcher's tail calls, `syscalls.rs`), as aya-ebpf's own helpers
// have: allowed for this crate by the crate-scoped RUSTC_BOOTSTRAP in `.cargo/config.toml`.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Kernel pointers are u64 in the records; these casts are the point of the code.
#![allow(clippy::cast_ptr_alignment)]
// Deliberate: helpers are inlined where the verifier must see the caller's pointer bounds (a
// BPF-to-BPF call loses them); the few out-of-line calls are marked `#[inline(never)]`.
#![allow(clippy::inline_always)]
// Map keys and values are handed to aya's `get`/`insert` by reference: by value each call would
// copy them once more onto the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]
// Program contexts are taken by value because that is the signature aya's entry-point macros
// give every program.
#![allow(clippy::needless_pass_by_value)]

#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod conn_update;
#[cfg(target_arch = "bpf")]
mod detect;
#[cfg(all(target_arch = "bpf", feature = "bench"))]
mod floor;
#[cfg(target_arch = "bpf")]
mod followed;
#[cfg(target_arch = "bpf")]
mod go;
#[cfg(target_arch = "bpf")]
mod gotls;
#[cfg(target_arch = "bpf")]
mod inband;
#[cfg(target_arch = "bpf")]
mod inband_mark;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod node;
#[cfg(target_arch = "bpf")]
mod python;
#[cfg(target_arch = "bpf")]
mod regs;
#[cfg(target_arch = "bpf")]
mod shed;
#[cfg(target_arch = "bpf")]
mod socket;
#[cfg(target_arch = "bpf")]
mod socket_layer;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod tls;

/// The helpers these programs call (`bpf_probe_read_kernel`, `bpf_get_current_task`) are
/// GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists only to link.
    loop {}
}

/// Host builds (clippy, `cargo check --workspace`) see an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
