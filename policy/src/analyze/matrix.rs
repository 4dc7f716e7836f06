//! The connectivity matrix: for one protocol and port, may each pod connect to each pod?

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::Engine;
use crate::model::Protocol;
use crate::state::PodId;
use crate::verdict::{Endpoint, Query};

/// `allowed[i][j]`: may `pods[i]` open a connection to `pods[j]` (both the source's egress and
/// the destination's ingress allow it)?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Every pod as `namespace/name`, sorted.
    pub pods: Vec<String>,
    /// Rows are sources, columns destinations, in the order of `pods`.
    pub allowed: Vec<Vec<bool>>,
}

/// The JSON contract: `{"port":80,"protocol":"TCP","pods":[...],"allowed":{from:{to:bool}}}`.
#[derive(Serialize)]
struct MatrixJson<'a> {
    port: u16,
    protocol: Protocol,
    pods: &'a [String],
    allowed: BTreeMap<&'a str, BTreeMap<&'a str, bool>>,
}

impl Serialize for Matrix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let allowed = self
            .pods
            .iter()
            .enumerate()
            .map(|(i, from)| {
                let row = self
                    .pods
                    .iter()
                    .enumerate()
                    .map(|(j, to)| (to.as_str(), self.allowed[i][j]))
                    .collect();
                (from.as_str(), row)
            })
            .collect();
        MatrixJson {
            port: self.port,
            protocol: self.protocol,
            pods: &self.pods,
            allowed,
        }
        .serialize(s)
    }
}

impl Matrix {
    /// Judges every ordered pair of pods.
    pub fn compute(engine: &Engine, protocol: Protocol, port: u16) -> Self {
        let state = engine.state();
        let mut ids: Vec<(String, PodId)> = state
            .pod_ids()
            .map(|id| (state.pod(id).key(), id))
            .collect();
        ids.sort();
        let allowed = ids
            .iter()
            .map(|(_, src)| {
                ids.iter()
                    .map(|(_, dst)| {
                        engine.allowed(&Query {
                            src: Endpoint::Pod(*src),
                            dst: Endpoint::Pod(*dst),
                            protocol,
                            port,
                        })
                    })
                    .collect()
            })
            .collect();
        Matrix {
            port,
            protocol,
            pods: ids.into_iter().map(|(k, _)| k).collect(),
            allowed,
        }
    }

    /// Whether `from` may connect to `to` (both `namespace/name`).
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        let i = self.pods.iter().position(|p| p == from)?;
        let j = self.pods.iter().position(|p| p == to)?;
        Some(self.allowed[i][j])
    }

    /// How many ordered pairs are allowed.
    pub fn allowed_count(&self) -> usize {
        self.allowed.iter().flatten().filter(|a| **a).count()
    }

    /// A table for people: numbered rows (sources) and columns (destinations), `✓` allowed, `·`
    /// denied. Readable at 30 pods and beyond: columns are three characters wide.
    pub fn render_table(&self) -> String {
        let n = self.pods.len();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} of {} connections allowed (rows: from, columns: to; ✓ allowed, · denied)",
            crate::model::ProtocolPort(self.protocol, self.port),
            self.allowed_count(),
            n * n
        );
        if n == 0 {
            out.push_str("(no pods)\n");
            return out;
        }
        let num_width = n.to_string().len();
        let name_width = self
            .pods
            .iter()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0);
        let label_width = num_width + 2 + name_width;
        let _ = write!(out, "\n{:label_width$} ", "");
        for j in 1..=n {
            let _ = write!(out, "{j:>3}");
        }
        out.push('\n');
        for (i, from) in self.pods.iter().enumerate() {
            let _ = write!(out, "{:>num_width$}  {from:<name_width$} ", i + 1);
            for allowed in &self.allowed[i] {
                out.push_str(if *allowed { "  ✓" } else { "  ·" });
            }
            out.push('\n');
        }
        out
    }
}
