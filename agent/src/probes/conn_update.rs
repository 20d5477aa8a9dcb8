//! Runs the programs' `conn_update` ([`agent_common::conn_update`]): the agent's writes to the
//! connection table, made in the kernel by `BPF_PROG_TEST_RUN` on a program loaded but never
//! attached, so that only the fields the agent owns are written, in place.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use agent_common::conn_update::{ConnUpdate, PROG_CONN_UPDATE};
use aya::{
    Ebpf,
    programs::{ProgramError, RawTracePoint},
};

/// Why the updater cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnUpdateError {
    #[error("program `{PROG_CONN_UPDATE}` is missing from the eBPF object")]
    Missing,
    #[error("program `{PROG_CONN_UPDATE}` could not be loaded: {0}")]
    Load(String),
    #[error(
        "running `{PROG_CONN_UPDATE}` by BPF_PROG_TEST_RUN failed: {0} (raw tracepoint test runs need Linux 5.10 or newer)"
    )]
    Run(std::io::Error),
}

/// The loaded program, by its own fd (the object keeps its copy; this one moves to the thread
/// that writes).
#[derive(Debug)]
pub struct ConnUpdater {
    prog: OwnedFd,
}

/// `BPF_PROG_TEST_RUN`'s command number (uapi `bpf.h`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member (uapi `bpf.h`, as of Linux 5.18, `batch_size` the last
/// field; the kernel requires the ones it does not know to be zero), the fields a raw
/// tracepoint's run reads: only the context (its arguments) goes in, the return value comes out.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<TestRunAttr>() == 80);

/// The program's arguments: `[tgid, fd, conn_id, op, a, b, c]`.
type Args = [u64; 7];

impl ConnUpdater {
    /// Loads the program (it is never attached) and checks that the kernel runs it.
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, ConnUpdateError> {
        let program: &mut RawTracePoint = ebpf
            .program_mut(PROG_CONN_UPDATE)
            .ok_or(ConnUpdateError::Missing)?
            .try_into()
            .map_err(|e: ProgramError| ConnUpdateError::Load(e.to_string()))?;
        program
            .load()
            .map_err(|e| ConnUpdateError::Load(super::error_chain(&e)))?;
        let prog = program
            .fd()
            .map_err(|e| ConnUpdateError::Load(e.to_string()))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| ConnUpdateError::Load(e.to_string()))?;
        let updater = Self { prog };
        // A run on no entry (tgid 0 is never a process's): writes nothing, but tells whether
        // this kernel runs raw tracepoint programs by BPF_PROG_TEST_RUN.
        updater.run(0, 0, 0, ConnUpdate::Role, [0; 3])?;
        Ok(updater)
    }

    /// Runs `op` with arguments `abc` on the entry of socket `fd` of `tgid`, if it is still the
    /// connection `conn_id`: what [`agent_common::conn_update::apply`] returns.
    pub fn run(
        &self,
        tgid: u32,
        fd: i32,
        conn_id: u64,
        op: ConnUpdate,
        abc: [u32; 3],
    ) -> Result<u32, ConnUpdateError> {
        // The program reads each back as the `u32` or `i32` it was.
        #[allow(clippy::cast_sign_loss)]
        let args: Args = [
            u64::from(tgid),
            u64::from(fd as u32),
            conn_id,
            u64::from(op as u32),
            u64::from(abc[0]),
            u64::from(abc[1]),
            u64::from(abc[2]),
        ];
        #[allow(clippy::cast_sign_loss)] // a valid fd is not negative
        let mut attr = TestRunAttr {
            prog_fd: self.prog.as_raw_fd() as u32,
            ctx_in: args.as_ptr() as u64,
            ctx_size_in: u32::try_from(size_of::<Args>()).unwrap_or(0),
            ..TestRunAttr::default()
        };
        // SAFETY: BPF_PROG_TEST_RUN reads `attr` (the size passed) and the `args` buffer it
        // points to, both alive for the call, and writes only `attr.retval` (and `duration`):
        // no data or context out.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                std::ptr::from_mut(&mut attr),
                size_of::<TestRunAttr>(),
            )
        };
        if rc < 0 {
            return Err(ConnUpdateError::Run(std::io::Error::last_os_error()));
        }
        Ok(attr.retval)
    }
}
