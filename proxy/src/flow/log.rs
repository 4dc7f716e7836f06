//! The flow log: a writer thread with a bounded queue that connection tasks never wait on,
//! and the per-rule and per-policy counts each written event adds to the metrics.

use super::*;

thread_local! {
    /// The writer thread's rule counters, by snapshot and rule (labels built once each).
    static RULE_COUNTERS: std::cell::RefCell<std::collections::HashMap<(usize, podwall_policy::RuleRef), prometheus_client::metrics::counter::Counter>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// What the writer thread writes. Events travel unboxed: the channel allocates a block per 31
/// events, not one per event.
#[derive(Debug)]
enum Line {
    Flow(FlowEvent),
    Request(RequestFlow),
}

/// Counts a flow for the rule that allowed each side, and a denied or audited one for each
/// policy isolating a side that refused it.
pub(super) fn count_decisions(counters: &crate::metrics::FlowCounters, e: &FlowEvent) {
    // A kernel-carried connection counts once, at its start.
    if e.phase == Some(super::FlowPhase::End) {
        return;
    }
    let Some(engine) = e.snapshot.as_deref().map(|p| &p.engine) else {
        return;
    };
    let snapshot = e.snapshot.as_ref().map_or(0, |s| s.generation as usize);
    for side in [&e.egress, &e.ingress].into_iter().flatten() {
        match side.decision {
            // A cluster policy's Deny is a denial of that policy's (and its rule's flow).
            Decision::ClusterDeny(r) if e.verdict != FlowVerdict::Allowed => {
                counters
                    .denials
                    .count(side.direction, &engine.state().policy(r.policy).name);
            }
            // A rule counts the flows it let through (not those the other side denied).
            Decision::Rule(r) | Decision::ClusterAccept(r) if e.verdict != FlowVerdict::Denied => {
                RULE_COUNTERS.with(|cache| {
                    let mut cache = cache.borrow_mut();
                    if let Some(c) = cache.get(&(snapshot, r)) {
                        c.inc();
                        return;
                    }
                    let policy = engine.state().policy(r.policy);
                    if let Some(rule) = policy
                        .rules(r.direction)
                        .unwrap_or_default()
                        .get(r.index as usize)
                    {
                        let c = counters
                            .rules
                            .counter(r.direction, &policy.name, &rule.field);
                        c.inc();
                        if cache.len() >= 4096 {
                            cache.clear();
                        }
                        cache.insert((snapshot, r), c);
                    }
                });
            }
            Decision::NoRuleMatched if e.verdict != FlowVerdict::Allowed => {
                if let Some(pod) = side.pod {
                    for id in engine.isolated_by(pod, side.direction) {
                        counters
                            .denials
                            .count(side.direction, &engine.state().policy(*id).name);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Sends events to the writer thread without waiting; if the writer falls behind by more than
/// the queue, events are dropped and counted rather than slowing connections down.
///
/// The writer is a plain thread with a buffered stdout: connection tasks never wait on it, and
/// under load it writes many events per wake-up. (tokio's stdout would hand every write to the
/// blocking pool: a thread switch per event.)
#[derive(Clone, Debug)]
pub struct FlowLog {
    // An unbounded (linked-blocks) channel with the bound kept by `queued`: a bounded std
    // channel allocates and touches every slot up front, 200 KB resident on an idle sidecar for
    // a queue that is empty almost always. A block holds 31 events (10 KB).
    tx: std::sync::mpsc::Sender<Line>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dropped: prometheus_client::metrics::counter::Counter,
}

/// Events waiting for the writer beyond which new ones are dropped (and counted).
pub(super) const QUEUE_LIMIT: usize = 8192;

impl FlowLog {
    /// Starts the writer thread, writing JSON lines to stdout.
    pub fn stdout(counters: crate::metrics::FlowCounters) -> Self {
        Self::writing_to(
            || std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()),
            counters,
        )
    }

    /// Starts the writer thread, writing JSON lines to what `open` gives (on that thread).
    pub(crate) fn writing_to<W: std::io::Write>(
        open: impl FnOnce() -> W + Send + 'static,
        counters: crate::metrics::FlowCounters,
    ) -> Self {
        let dropped = counters.dropped.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Line>();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let taken = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                let mut out = open();
                while let Ok(first) = rx.recv() {
                    let mut event = Some(first);
                    while let Some(e) = event {
                        taken.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        let written = match &e {
                            Line::Flow(e) => {
                                count_decisions(&counters, e);
                                serde_json::to_writer(&mut out, e)
                            }
                            Line::Request(r) => serde_json::to_writer(&mut out, r),
                        };
                        if written.is_err() || out.write_all(b"\n").is_err() {
                            return;
                        }
                        event = rx.try_recv().ok();
                    }
                    // The queue is empty: flush, then let events gather for a moment. While this thread
                    // sleeps, senders never have to wake it, which keeps a futex call off every
                    // connection under load; lines still appear within a few milliseconds.
                    if out.flush().is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the flow log writer; flow events are dropped");
        }
        FlowLog {
            tx,
            queued,
            dropped,
        }
    }

    fn queue(&self, line: Line) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.queued.fetch_add(1, Relaxed) >= QUEUE_LIMIT {
            self.queued.fetch_sub(1, Relaxed);
            self.dropped.inc();
            return;
        }
        if self.tx.send(line).is_err() {
            // The writer is gone (stdout closed).
            self.queued.fetch_sub(1, Relaxed);
            self.dropped.inc();
        }
    }

    /// Queues an event.
    pub fn emit(&self, event: FlowEvent) {
        self.queue(Line::Flow(event));
    }

    /// Queues an HTTP request's event.
    pub fn emit_request(&self, request: RequestFlow) {
        self.queue(Line::Request(request));
    }
}
