//! Fuzzing that runs on stable Rust (no nightly, no libFuzzer): each crate's tests hand
//! [`run`] seeds (valid inputs, taken from what the end-to-end tests send) and a target; every
//! input is a seed with a few random mutations stacked on it (bit flips, bytes set to edge
//! values, inserts, deletions, repeats, splices with another seed, truncation). A panic in
//! the target fails the test and prints the input, in hex, with how to replay it.
//!
//! How many inputs: `PODWALL_FUZZ_INPUTS` (default [`DEFAULT_INPUTS`], for every test run);
//! a long run outside CI sets it to a million, in a release build:
//! `PODWALL_FUZZ_INPUTS=1000000 cargo test --release -p podwall-fqdn --test fuzz`.
//! `PODWALL_FUZZ_SEED` picks another pseudo-random sequence (the default is fixed, so a run
//! is reproducible). No coverage feedback: the seeds and the mutations' structure stand in
//! for it, which is why the seeds should reach every branch a well-formed input can.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// Inputs per target in an ordinary test run.
pub const DEFAULT_INPUTS: u64 = 5_000;

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Inputs given to the target.
    pub inputs: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Inputs to run, from `PODWALL_FUZZ_INPUTS`.
pub fn inputs() -> u64 {
    std::env::var("PODWALL_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_INPUTS)
}

/// A xorshift generator: fast, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that sit on the edges parsers get wrong.
const EDGES: [u8; 9] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, b'.', b'/', b'%'];

fn mutate(rng: &mut Rng, seeds: &[&[u8]], input: &mut Vec<u8>, max_len: usize) {
    let n = input.len();
    match rng.below(9) {
        0 if n > 0 => {
            let i = rng.below(n);
            input[i] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            let i = rng.below(n);
            input[i] = EDGES[rng.below(EDGES.len())];
        }
        2 if n > 0 => {
            let i = rng.below(n);
            input[i] = rng.next() as u8;
        }
        3 => {
            let i = rng.below(n + 1);
            let count = 1 + rng.below(8);
            for _ in 0..count {
                input.insert(i, rng.next() as u8);
            }
        }
        4 if n > 0 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(16));
            input.drain(i..i + len);
        }
        5 if n > 0 => {
            // A run repeated: length fields and counts meet more data than they expect.
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(32));
            let run: Vec<u8> = input[i..i + len].to_vec();
            let at = rng.below(n + 1);
            for _ in 0..1 + rng.below(4) {
                input.splice(at..at, run.iter().copied());
            }
        }
        6 if !seeds.is_empty() => {
            // A piece of another seed, at any place.
            let other = seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let i = rng.below(other.len());
                let len = 1 + rng.below(other.len() - i);
                let at = rng.below(n + 1);
                input.splice(at..at, other[i..i + len].iter().copied());
            }
        }
        7 if n > 0 => input.truncate(rng.below(n)),
        _ if n >= 2 => {
            // Two bytes as a big-endian length or count set to an edge.
            let i = rng.below(n - 1);
            let v: u16 = [0, 1, 0x7f, 0xff, 0x100, 0x3fff, 0xc000, 0xffff][rng.below(8)];
            input[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        _ => input.push(rng.next() as u8),
    }
    input.truncate(max_len);
}

/// Runs `target` on [`inputs`] mutated inputs (the seeds themselves first), at most
/// `max_len` bytes each; prints and returns what it did. A panic fails the caller with the
/// input that caused it.
pub fn run(name: &str, seeds: &[&[u8]], max_len: usize, mut target: impl FnMut(&[u8])) -> Report {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let total = inputs();
    let seed = std::env::var("PODWALL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15u64);
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut input = Vec::with_capacity(max_len);
    for i in 0..total {
        input.clear();
        let base = seeds[i as usize % seeds.len()];
        input.extend_from_slice(&base[..base.len().min(max_len)]);
        if i >= seeds.len() as u64 {
            // Mostly one mutation (an input a strict parser still reads, to go deeper), now
            // and then several.
            let count = if rng.below(4) == 0 {
                2 + rng.below(6)
            } else {
                1
            };
            for _ in 0..count {
                mutate(&mut rng, seeds, &mut input, max_len);
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!(
                "{name}: input {i} (PODWALL_FUZZ_SEED={seed}) failed: {why}\ninput ({} bytes): {hex}",
                input.len()
            );
        }
    }
    let report = Report {
        inputs: total,
        elapsed: started.elapsed(),
    };
    eprintln!(
        "fuzz {name}: {} inputs in {:.1?} ({:.1} µs each), no failure",
        report.inputs,
        report.elapsed,
        report.elapsed.as_secs_f64() * 1e6 / report.inputs.max(1) as f64
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_and_a_panic_names_its_input() {
        let mut longest = 0;
        run("length", &[b"abcdef", b"xyz"], 8, |input| {
            longest = longest.max(input.len());
        });
        assert!(longest <= 8);
        let caught = catch_unwind(|| {
            run("panics", &[b"ab"], 4, |input| {
                assert!(input != b"ab", "boom")
            });
        });
        let message = caught.expect_err("the seed itself panics");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            text.contains("input 0") && text.contains("6162") && text.contains("boom"),
            "{text}"
        );
    }
}
