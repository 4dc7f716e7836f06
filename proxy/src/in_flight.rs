//! The verdicts the packet filter is making, as a policy change sees them. Each judging thread
//! counts its batches (the count is odd while one is judged and its verdicts sent), so the
//! pass that judges open flows again after a change can first wait out every batch that may
//! have been judged under the policy before. A flow admitted in such a batch gets its
//! conntrack entry as its verdict is sent (the kernel re-injects the packet, and confirms the
//! entry, within that call): a pass that read conntrack before then would miss it, and the
//! flow would run on under the old policy.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every judging thread's count of batches.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// Locked when a thread starts and by each policy change, never per packet.
    threads: Mutex<Vec<Arc<AtomicU64>>>,
}

/// One judging thread's count.
#[derive(Debug)]
pub(crate) struct Batches(Arc<AtomicU64>);

impl InFlight {
    /// A count for a new judging thread.
    pub(crate) fn register(&self) -> Batches {
        let count = Arc::new(AtomicU64::new(0));
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(count.clone());
        Batches(count)
    }

    /// Called once the new policy is in force: waits until every batch being judged now has
    /// had its verdicts sent, for at most `limit`. Whether they all had.
    pub(crate) fn wait_out(&self, limit: Duration) -> bool {
        // Pairs with the fence in `Batches::judge`: either that batch began after this (and
        // reads the new policy), or its odd count is seen here.
        fence(SeqCst);
        let busy: Vec<(Arc<AtomicU64>, u64)> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|count| (count.clone(), count.load(SeqCst)))
            .filter(|(_, seen)| seen % 2 == 1)
            .collect();
        let start = Instant::now();
        for (count, seen) in busy {
            while count.load(SeqCst) == seen {
                if start.elapsed() >= limit {
                    return false;
                }
                // A batch is microseconds of work and one netlink send.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        true
    }
}

impl Batches {
    /// Runs `batch` (judging packets and sending their verdicts) counted as in flight.
    pub(crate) fn judge<R>(&self, batch: impl FnOnce() -> R) -> R {
        self.0.fetch_add(1, SeqCst);
        fence(SeqCst);
        // Counted out however it ends (a panic too, so no pass waits on it for good).
        let _done = Done(&self.0);
        batch()
    }
}

/// Counts a batch out when dropped.
struct Done<'a>(&'a AtomicU64);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_change_waits_out_the_batch_being_judged_and_not_the_idle_threads() {
        let in_flight = Arc::new(InFlight::default());
        let idle = in_flight.register();
        let busy = in_flight.register();
        // Both idle (one judged a batch already): nothing to wait for.
        idle.judge(|| ());
        assert!(in_flight.wait_out(Duration::ZERO));
        let (started_tx, started) = std::sync::mpsc::channel();
        let (finish, finish_rx) = std::sync::mpsc::channel::<()>();
        let judging = std::thread::spawn(move || {
            busy.judge(|| {
                started_tx.send(()).expect("send");
                finish_rx.recv().expect("recv");
            })
        });
        started.recv().expect("batch started");
        // Still judging: the wait runs out.
        assert!(!in_flight.wait_out(Duration::from_millis(20)));
        // It ends while waited for: the wait returns once its verdicts are sent.
        let waiter = {
            let in_flight = in_flight.clone();
            std::thread::spawn(move || in_flight.wait_out(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "returned while the batch was judged");
        finish.send(()).expect("send");
        judging.join().expect("judged");
        assert!(waiter.join().expect("waited"));
        // Idle again, however many batches it judged.
        assert!(in_flight.wait_out(Duration::ZERO));
        // A batch that panicked is over too.
        let panicked = std::panic::catch_unwind(|| idle.judge(|| panic!("a judging bug")));
        assert!(panicked.is_err());
        assert!(
            in_flight.wait_out(Duration::ZERO),
            "waits on a batch that panicked"
        );
    }
}
