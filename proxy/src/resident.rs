//! Giving back the pages of code that only start-up and policy compiling needed.
//!
//! podwall is one binary (CLI, analyzer, control plane, sandbox and sidecar), and its machine
//! code is mapped from the file. The kernel maps code in 64 KiB chunks around every page touched,
//! so parsing flags, loading YAML and compiling a policy leave megabytes of code resident that
//! the sidecar's steady state (accept, judge, relay) never runs again. Those pages are clean
//! copies of the file, so dropping them from this process's page tables loses nothing: what is
//! still used faults back in from the page cache (a minor fault, no I/O), and the page cache is
//! shared by every sidecar on the node that runs the same image.
//!
//! The same holds for the shared libraries (libc, libm, the loader): their code is in the page
//! cache once for every process on the node. Only file mappings that are read-only and hold no
//! anonymous (copy-on-write) page are touched: dropping a written page of a private mapping
//! would revert it to the file's bytes (relocations, for one), so those are left alone.

use std::io;

/// Gives back the code pages start-up or a policy update used and no longer needs (see the
/// module docs). Logged at debug level. (Trimming the heap as well was tried: what it holds
/// then is live, so nothing came back.)
pub(crate) fn settle() {
    match release_cold_code() {
        Ok(r) => tracing::debug!(
            mappings = r.mappings,
            kib = r.bytes / 1024,
            "released resident code"
        ),
        Err(e) => tracing::debug!(error = %e, "cannot release resident code"),
    }
}

/// Has glibc's allocator keep at most `arenas` arenas (one per sidecar worker thread, at least
/// one), before the sidecar starts any thread. glibc gives every thread that allocates an
/// arena of its own, and each arena keeps resident the high-water mark of its thread's bursts:
/// after a burst of new kernel-carried connections (the judge allocating events, the flow log
/// and the end watchers freeing them), the sidecar held 1,000 connections with 1.97 MB more
/// RssAnon than idle with an arena per thread, and 0.24 MB more with one (bench, `--only
/// l4`). The cost is the threads sharing the arena's lock on the allocations they make per
/// connection (none per packet): 14.0 to 15.7 µs of sidecar CPU per new connection with one
/// arena, 14.1 to 14.5 µs with one per thread, over a few runs each.
#[allow(unsafe_code)]
pub fn limit_malloc_arenas(arenas: usize) {
    #[cfg(target_env = "gnu")]
    {
        let arenas = nix::libc::c_int::try_from(arenas.max(1)).unwrap_or(nix::libc::c_int::MAX);
        // SAFETY: mallopt sets one of the allocator's parameters and touches no memory of
        // ours; glibc applies M_ARENA_MAX when a thread first asks for an arena.
        let set = unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, arenas) };
        if set != 1 {
            tracing::debug!("cannot limit malloc arenas");
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = arenas;
}

/// What [`release_cold_code`] gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Released {
    /// Mappings advised.
    pub mappings: usize,
    /// Resident bytes they held before.
    pub bytes: u64,
}

/// One mapping from `/proc/self/smaps` that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    start: usize,
    end: usize,
    rss_kb: u64,
}

/// A mapping as `/proc/self/smaps` describes it, with the fields that decide.
struct Mapping {
    start: usize,
    end: usize,
    /// Read-only and backed by a file.
    read_only_file: bool,
    rss_kb: u64,
    anonymous_kb: Option<u64>,
}

/// The read-only file mappings that hold only clean file pages.
fn candidates(smaps: &str) -> Vec<Candidate> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            // A new mapping: "start-end perms offset dev inode path".
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            mappings.push(Mapping {
                start,
                end,
                read_only_file: perms.starts_with('r')
                    && !perms.contains('w')
                    && path.starts_with('/'),
                rss_kb: 0,
                anonymous_kb: None,
            });
            continue;
        }
        let (Some(m), Some(kb)) = (
            mappings.last_mut(),
            fields.next().and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        match first {
            "Rss:" => m.rss_kb = kb,
            "Anonymous:" => m.anonymous_kb = Some(kb),
            _ => {}
        }
    }
    mappings
        .into_iter()
        .filter(|m| m.read_only_file && m.anonymous_kb == Some(0) && m.rss_kb > 0)
        .map(|m| Candidate {
            start: m.start,
            end: m.end,
            rss_kb: m.rss_kb,
        })
        .collect()
}

/// Drops this process's resident copies of clean, read-only file pages (code, constants); the
/// ones still in use come back on their next use.
// One of podwall's few unsafe calls (the others: netlink::receive_batch, and mallopt in
// limit_malloc_arenas): madvise on memory Rust does not own (see the SAFETY note).
#[allow(unsafe_code)]
pub(crate) fn release_cold_code() -> io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for c in candidates(&smaps) {
        let Some(ptr) = std::ptr::NonNull::new(c.start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: the range is a whole file mapping that is read-only and holds
        // no anonymous page, so every page is an unmodified copy of the file; MADV_DONTNEED on
        // it only unmaps them, and the next access maps the same bytes again.
        let advised = unsafe {
            nix::sys::mman::madvise(
                ptr,
                c.end - c.start,
                nix::sys::mman::MmapAdvise::MADV_DONTNEED,
            )
        };
        if advised.is_ok() {
            released.mappings += 1;
            released.bytes += c.rss_kb * 1024;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 123 /usr/bin/podwall
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fd:01 123 /usr/bin/podwall
Size:               8192 kB
Rss:                6000 kB
Anonymous:             0 kB
55d0a0900000-55d0a0a00000 r--p 00900000 fd:01 123 /usr/bin/podwall
Size:               1024 kB
Rss:                1024 kB
Anonymous:           300 kB
55d0a0a00000-55d0a0a10000 rw-p 00a00000 fd:01 123 /usr/bin/podwall
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 900 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r-xp 00000000 00:00 0
Size:               1024 kB
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_candidates() {
        let got = candidates(SMAPS);
        assert_eq!(
            got,
            vec![
                Candidate {
                    start: 0x55d0a0000000,
                    end: 0x55d0a0100000,
                    rss_kb: 512
                },
                Candidate {
                    start: 0x55d0a0100000,
                    end: 0x55d0a0900000,
                    rss_kb: 6000
                },
                Candidate {
                    start: 0x7f0000000000,
                    end: 0x7f0000100000,
                    rss_kb: 900
                },
            ],
            "the relocated read-only mapping (anonymous pages), the writable one and \
             anonymous memory must be left alone"
        );
    }

    /// What the release frees is a figure for the bench (`podwall-bench` reads the sidecar's
    /// idle RSS): other tests of this process fault pages in and out meanwhile, so only that
    /// it runs, says what it released and leaves working code is checked here.
    #[test]
    fn released_code_still_runs_and_the_release_reports_what_it_advised() {
        let released = release_cold_code().expect("release");
        assert!(released.mappings > 0, "the test binary's code is mapped");
        assert!(released.bytes > 0, "some of it was resident: {released:?}");
        // Code and constants fault back in: formatting and parsing still work.
        let text = format!("{:?}", candidates(SMAPS));
        assert!(text.contains("rss_kb: 6000"));
    }
}
