//! The `shardq` command's building blocks, as a library so the end-to-end tests can drive them:
//! the local-cluster supervisor, admin commands, the run verifier and the benchmark.

pub mod admin;
pub mod autoscale;
pub mod bench;
pub mod bench_failover;
pub mod tools;
pub mod up;
pub mod verify;

/// Lifts this process's soft limit on open files to the hard one and returns the limit now in
/// force. Servers hold a socket per connection, so `--max-connections`, not a default of 1,024
/// descriptors, is what should bound them (tests that hold thousands of sockets use it too).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}
