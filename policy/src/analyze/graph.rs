//! Who may talk to whom, as a picture: pods as nodes (grouped by namespace), an edge for each
//! ordered pair the policies allow on some port (labelled with the ports), and, overlaid, the
//! flows that were observed (denied in red, audited in amber, seen and allowed in bold).
//! Rendered as Mermaid (for Markdown) and Graphviz DOT text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::analyze::matrix::Matrix;

/// What was seen between two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    /// Allowed.
    Allowed,
    /// Would have been denied; passed in audit mode.
    Audit,
    /// Denied.
    Denied,
}

/// One observed flow: `namespace/pod` (or an address) at both ends, the port, the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The source.
    pub from: String,
    /// The destination.
    pub to: String,
    /// `TCP/5432`.
    pub port: String,
    /// What happened.
    pub seen: Seen,
}

/// An edge: the ports policy allows, and what was seen on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edge {
    /// Ports the policies allow (`TCP/8080`).
    pub allowed: BTreeSet<String>,
    /// Ports seen, by what happened.
    pub seen: BTreeMap<String, Seen>,
}

/// The graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    /// Nodes by namespace (an address outside the cluster under `""`).
    pub nodes: BTreeMap<String, BTreeSet<String>>,
    /// Edges by (from, to).
    pub edges: BTreeMap<(String, String), Edge>,
}

impl Graph {
    /// From the matrices of the ports asked about and what was observed. A pod's connections to
    /// itself (always allowed) are left out.
    pub fn build(matrices: &[Matrix], observed: &[Observation]) -> Graph {
        let mut g = Graph::default();
        let mut node = |key: &str| {
            let ns = key.split_once('/').map(|(ns, _)| ns).unwrap_or("");
            g.nodes
                .entry(ns.to_string())
                .or_default()
                .insert(key.to_string());
        };
        for m in matrices {
            for p in &m.pods {
                node(p);
            }
        }
        for o in observed {
            node(&o.from);
            node(&o.to);
        }
        for m in matrices {
            let port = format!("{}/{}", m.protocol, m.port);
            for (i, from) in m.pods.iter().enumerate() {
                for (j, to) in m.pods.iter().enumerate() {
                    if i != j && m.allowed[i][j] {
                        g.edges
                            .entry((from.clone(), to.clone()))
                            .or_default()
                            .allowed
                            .insert(port.clone());
                    }
                }
            }
        }
        for o in observed.iter().filter(|o| o.from != o.to) {
            let seen = &mut g
                .edges
                .entry((o.from.clone(), o.to.clone()))
                .or_default()
                .seen;
            // The worst of what was seen on a port.
            let was = seen.entry(o.port.clone()).or_insert(o.seen);
            *was = (*was).max(o.seen);
        }
        g
    }

    fn ids(&self) -> BTreeMap<&str, String> {
        self.nodes
            .values()
            .flatten()
            .enumerate()
            .map(|(i, k)| (k.as_str(), format!("n{i}")))
            .collect()
    }

    fn label(edge: &Edge) -> (String, Option<Seen>) {
        let mut parts: Vec<String> = edge.allowed.iter().cloned().collect();
        let mut worst = None;
        for (port, seen) in &edge.seen {
            worst = worst.max(Some(*seen));
            match seen {
                Seen::Denied => parts.push(format!("{port} DENIED")),
                Seen::Audit => parts.push(format!("{port} AUDIT")),
                Seen::Allowed if !edge.allowed.contains(port) => parts.push(port.clone()),
                Seen::Allowed => {}
            }
        }
        (parts.join(", "), worst)
    }

    /// Mermaid `flowchart` text: namespaces as subgraphs; seen denials red, audits amber,
    /// seen allowed flows thick.
    pub fn mermaid(&self) -> String {
        let ids = self.ids();
        let mut out = String::from("flowchart LR\n");
        for (ns, keys) in &self.nodes {
            let title = if ns.is_empty() {
                "outside the cluster"
            } else {
                ns
            };
            let _ = writeln!(
                out,
                "  subgraph {}[\"{title}\"]",
                sanitize(&format!("ns_{ns}"))
            );
            for k in keys {
                let name = k.rsplit_once('/').map(|(_, n)| n).unwrap_or(k);
                let _ = writeln!(out, "    {}[\"{name}\"]", ids[k.as_str()]);
            }
            out.push_str("  end\n");
        }
        let mut styles = Vec::new();
        for (i, ((from, to), edge)) in self.edges.iter().enumerate() {
            let (label, seen) = Self::label(edge);
            let arrow = match seen {
                Some(Seen::Allowed) => "==>",
                Some(Seen::Denied | Seen::Audit) if edge.allowed.is_empty() => "-.->",
                _ => "-->",
            };
            let _ = writeln!(
                out,
                "  {} {arrow}|\"{}\"| {}",
                ids[from.as_str()],
                label.replace('"', "'"),
                ids[to.as_str()]
            );
            match seen {
                Some(Seen::Denied) => {
                    styles.push(format!("  linkStyle {i} stroke:#d00,color:#d00"))
                }
                Some(Seen::Audit) => styles.push(format!("  linkStyle {i} stroke:#e90,color:#e90")),
                _ => {}
            }
        }
        for s in styles {
            out.push_str(&s);
            out.push('\n');
        }
        out
    }

    /// Graphviz DOT text. `clusters`: namespaces as `subgraph cluster_*` boxes (Graphviz draws
    /// them; simpler renderers want them off, and nodes are then labelled `namespace/pod`).
    pub fn dot(&self, clusters: bool) -> String {
        let ids = self.ids();
        let mut out = String::from(
            "digraph podwall {\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
        );
        for (ns, keys) in &self.nodes {
            if clusters {
                let title = if ns.is_empty() {
                    "outside the cluster"
                } else {
                    ns
                };
                let _ = writeln!(
                    out,
                    "  subgraph {} {{\n    label=\"{title}\";",
                    sanitize(&format!("cluster_{ns}"))
                );
            }
            for k in keys {
                let name = if clusters {
                    k.rsplit_once('/').map(|(_, n)| n).unwrap_or(k)
                } else {
                    k
                };
                let _ = writeln!(out, "    {} [label=\"{name}\"];", ids[k.as_str()]);
            }
            if clusters {
                out.push_str("  }\n");
            }
        }
        for ((from, to), edge) in &self.edges {
            let (label, seen) = Self::label(edge);
            let style = match seen {
                Some(Seen::Denied) => ", color=\"red\", fontcolor=\"red\"",
                Some(Seen::Audit) => ", color=\"orange\", fontcolor=\"orange\"",
                Some(Seen::Allowed) => ", penwidth=2",
                None => "",
            };
            let dashed = if edge.allowed.is_empty() {
                ", style=\"dashed\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} -> {} [label=\"{}\"{style}{dashed}];",
                ids[from.as_str()],
                ids[to.as_str()],
                label.replace('"', "'")
            );
        }
        out.push_str("}\n");
        out
    }
}

/// An identifier Mermaid and DOT accept.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn matrix() -> Matrix {
        Matrix {
            port: 8080,
            protocol: Protocol::Tcp,
            pods: vec!["prod/api".into(), "prod/db".into(), "prod/web".into()],
            allowed: vec![
                vec![true, true, false],
                vec![false, true, false],
                vec![true, false, true],
            ],
        }
    }

    #[test]
    fn allowed_pairs_become_edges_and_observed_denials_are_marked() {
        let g = Graph::build(
            &[matrix()],
            &[
                Observation {
                    from: "prod/web".into(),
                    to: "prod/db".into(),
                    port: "TCP/5432".into(),
                    seen: Seen::Denied,
                },
                Observation {
                    from: "prod/web".into(),
                    to: "prod/api".into(),
                    port: "TCP/8080".into(),
                    seen: Seen::Allowed,
                },
            ],
        );
        assert_eq!(
            g.edges.len(),
            3,
            "api->db, web->api, and the denied web->db"
        );
        let mermaid = g.mermaid();
        assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
        assert!(mermaid.contains("subgraph ns_prod[\"prod\"]"), "{mermaid}");
        assert!(
            mermaid.contains("n2 ==>|\"TCP/8080\"| n0"),
            "seen and allowed: {mermaid}"
        );
        assert!(
            mermaid.contains("n2 -.->|\"TCP/5432 DENIED\"| n1"),
            "{mermaid}"
        );
        assert!(mermaid.contains("stroke:#d00"), "{mermaid}");
        let dot = g.dot(true);
        assert!(dot.contains("subgraph cluster_prod"), "{dot}");
        assert!(dot.contains("n0 -> n1 [label=\"TCP/8080\"];"), "{dot}");
        assert!(dot.contains("color=\"red\""), "{dot}");
        assert!(
            !g.dot(false).contains("subgraph"),
            "flat for simple renderers"
        );
    }
}
