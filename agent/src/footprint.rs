//! The agent's resident memory beyond its data: its start-up code pages.
//!
//! Measured under wrk against nginx (`/proc/<agent>/smaps` by mapping): of ~38 MB resident,
//! 8 MB are the event ring, 8 MB the executable's code pages (most touched once at start-up:
//! argument parsing, BTF, program loading), 12 MB the main heap and 9 MB glibc's other arenas
//! (one per thread that allocates: the store writer, the runtime's). One arena for all threads
//! (`M_ARENA_MAX` 1) saved ~2.5 MB but cost ~13 % more CPU per request (3 interleaved runs:
//! 7.1–10.2 µs against 7.3–8.3): not taken.

/// Hands the executable's code pages back to the kernel once start-up is over: the code that
/// ran only then (argument parsing, BTF, loading the programs) stays resident otherwise.
/// `MADV_PAGEOUT` evicts clean file pages mapped nowhere else, so the code the agent still runs
/// is read again from the file as it is used (a few hundred kB, once, as capture begins; CPU
/// per request unchanged within the noise, measured). Best effort: a kernel before 5.4 refuses,
/// and nothing changes.
pub fn release_start_up_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = exe.to_string_lossy();
    for line in maps.lines() {
        // `start-end perms offset dev inode path`
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("r-x") || fields.nth(3) != Some(exe.as_ref()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is one of this process's own mappings, page-aligned as the kernel
        // lists it; MADV_PAGEOUT only reclaims its clean, file-backed pages, which the kernel
        // faults in again on use. No memory the program holds a reference into changes.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end.saturating_sub(start),
                libc::MADV_PAGEOUT,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// Resident kB of this executable's code mappings.
    fn code_rss_kib() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let exe = exe.to_string_lossy().into_owned();
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut in_code = false;
        let mut total = 0;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or_default();
            if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                let perms = fields.next().unwrap_or_default();
                in_code = perms.starts_with("r-x") && fields.nth(3) == Some(exe.as_str());
            } else if in_code && first == "Rss:" {
                total += fields
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    #[test]
    fn start_up_code_pages_are_handed_back() {
        let before = code_rss_kib();
        super::release_start_up_code();
        let after = code_rss_kib();
        assert!(before > 0, "the test binary's code is resident");
        // MADV_PAGEOUT is Linux 5.4+ (these machines run 6.x).
        assert!(
            after < before,
            "code pages resident: {before} kB before, {after} kB after"
        );
    }
}
