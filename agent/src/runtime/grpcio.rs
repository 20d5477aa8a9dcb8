//! grpcio (the Python gRPC package, on grpc-core): the one runtime the worker rule was measured
//! on ([`crate::trace::workers`]). A process runs it when it maps grpcio's extension module,
//! `cygrpc.cpython-*.so`, which bundles grpc-core.

use std::io::{BufRead as _, BufReader};

/// Whether `pid` maps grpcio's `cygrpc` module; false when its maps cannot be read.
#[must_use]
pub fn is_grpcio(pid: u32) -> bool {
    let Ok(maps) = std::fs::File::open(format!("/proc/{pid}/maps")) else {
        return false;
    };
    BufReader::new(maps)
        .lines()
        .map_while(Result::ok)
        .any(|line| maps_cygrpc(&line))
}

/// Whether a `/proc/PID/maps` line maps grpcio's extension module.
fn maps_cygrpc(line: &str) -> bool {
    line.split_whitespace()
        .nth(5)
        .and_then(|path| path.rsplit('/').next())
        .is_some_and(|file| {
            // The module's file name is exact (`cygrpc.cpython-311-x86_64-linux-gnu.so`).
            #[allow(clippy::case_sensitive_file_extension_comparisons)]
            let shared_object = file.ends_with(".so");
            file.starts_with("cygrpc.") && shared_object
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_module_is_told_from_other_mappings() {
        assert!(maps_cygrpc(
            "7f1c2a000000-7f1c2a400000 r-xp 00100000 08:01 1234 \
             /usr/lib/python3/dist-packages/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so"
        ));
        assert!(!maps_cygrpc(
            "7f1c2a000000-7f1c2a400000 r-xp 00000000 08:01 99 /usr/lib/libcygrpc-notes.txt"
        ));
        assert!(!maps_cygrpc(
            "7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]"
        ));
        assert!(
            !is_grpcio(std::process::id()),
            "this test is no grpcio process"
        );
    }
}
