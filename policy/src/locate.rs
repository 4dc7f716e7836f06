//! The line of a field inside a YAML document, so a finding points at `ingres:` itself rather
//! than at the `apiVersion:` of the object that holds it.
//!
//! Findings name fields as the API server does (`spec.ingress[0].ports[1].port`); this module
//! parses the document once more, keeping every key's and item's position (serde-saphyr's
//! `Spanned`), and walks the path. A field that is absent (a required one) is placed at the
//! deepest part of its path that exists.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::diagnostic::Diagnostic;

/// A YAML node with the positions of its keys and items; scalars keep nothing.
enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Leaf,
}

/// A mapping key as text (YAML allows numbers and booleans as keys).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<Key>>()? {
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

/// One step of a field path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `spec.ingress[0].from[1]["app.kubernetes.io/name"]` into its steps; `None` when the
/// text is not a path.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']')?;
            let inside = &after[..close];
            if let Some(quoted) = inside.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                out.push(Step::Key(quoted));
            } else {
                out.push(Step::Index(inside.parse().ok()?));
            }
            rest = &after[close + 1..];
        } else {
            let rest_no_dot = rest.strip_prefix('.').unwrap_or(rest);
            let end = rest_no_dot.find(['.', '[']).unwrap_or(rest_no_dot.len());
            if end > 0 {
                out.push(Step::Key(&rest_no_dot[..end]));
            }
            rest = &rest_no_dot[end..];
        }
    }
    Some(out)
}

/// The 1-based line, within `document`, of the field at `path` (or of the deepest part of the
/// path present); `None` when the document does not parse or the path is not one.
pub fn field_line(document: &str, path: &str) -> Option<usize> {
    let steps = steps(path)?;
    let root: Spanned<Node> = serde_saphyr::from_str(document).ok()?;
    let mut node = &root.value;
    let mut line = None;
    for step in steps {
        let next = match (node, step) {
            (Node::Map(entries), Step::Key(key)) => entries
                .iter()
                .find(|(k, _)| k.value.0 == key)
                .map(|(k, v)| (k.referenced.line(), &v.value)),
            (Node::Seq(items), Step::Index(i)) => {
                items.get(i).map(|v| (v.referenced.line(), &v.value))
            }
            _ => None,
        };
        let Some((at, child)) = next else { break };
        if at > 0 {
            line = Some(at as usize);
        }
        node = child;
    }
    line
}

/// Moves each finding about `source` that names a field to that field's line. `text` is the
/// whole file the findings' origins count lines in; findings about other sources, without a
/// field, or not from text (line 0) are left as they are.
pub fn point_at_fields(findings: &mut [Diagnostic], source: &str, text: &str) {
    let mut documents: Option<Vec<DocumentText>> = None;
    for finding in findings.iter_mut() {
        let (Some(origin), Some(field)) = (finding.origin.as_mut(), finding.field.as_deref())
        else {
            continue;
        };
        if origin.source != source || origin.line == 0 {
            continue;
        }
        let docs = documents.get_or_insert_with(|| split_documents(text));
        let Some(doc) = docs.iter().find(|d| d.line == origin.line) else {
            continue;
        };
        let path = match origin.item {
            Some(i) => format!("items[{i}].{field}"),
            None => field.to_string(),
        };
        if let Some(line) = field_line(&doc.text, &path) {
            origin.line = doc.line + line - 1;
        }
    }
}

/// One YAML document of a multi-document text.
pub(crate) struct DocumentText {
    /// The 1-based line of the text where it starts.
    pub(crate) line: usize,
    /// Its text, lines counted from `line`.
    pub(crate) text: String,
}

/// Splits a text at its `---` document markers, keeping each document's first line number.
///
/// YAML forbids `---` and `...` at the start of a line inside any scalar, so a line-based split
/// is exact; unlike the parser's own multi-document mode it keeps empty documents in the count
/// and tells where each starts. Content after `--- ` on the marker line stays in its document.
pub(crate) fn split_documents(text: &str) -> Vec<DocumentText> {
    let mut docs = Vec::new();
    let mut current = DocumentText {
        line: 1,
        text: String::new(),
    };
    let is_marker = |l: &str, m: &str| {
        l.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line = raw.trim_end_matches(['\n', '\r']);
        if is_marker(line, "---") {
            docs.push(std::mem::replace(
                &mut current,
                DocumentText {
                    line: i + 1,
                    text: String::new(),
                },
            ));
            // Keep columns of content on the marker line: blank the marker out.
            current.text.push_str("   ");
            current.text.push_str(&raw[3..]);
        } else if is_marker(line, "...") {
            current.text.push('\n');
        } else {
            current.text.push_str(raw);
        }
    }
    docs.push(current);
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api
  labels: {\"app.kubernetes.io/name\": api}
spec:
  podSelector: {}
  ingres:
  - from:
    - podSelector: {matchLabels: {app: web}}
    ports:
    - port: 80
    - port: 99999
";

    #[test]
    fn a_field_path_finds_the_line_of_its_key_or_item() {
        assert_eq!(field_line(POLICY, "spec.ingres"), Some(8));
        assert_eq!(field_line(POLICY, "spec.ingres[0].ports[1].port"), Some(13));
        assert_eq!(field_line(POLICY, "spec.ingres[0].from[0]"), Some(10));
        assert_eq!(
            field_line(POLICY, "metadata.labels[\"app.kubernetes.io/name\"]"),
            Some(5)
        );
        assert_eq!(
            field_line(POLICY, "spec.policyTypes"),
            Some(6),
            "an absent field: its parent"
        );
        assert_eq!(field_line(POLICY, "kind"), Some(2));
        assert_eq!(field_line("not: [yaml", "kind"), None);
    }

    #[test]
    fn findings_move_to_their_fields_line_in_the_right_document() {
        let text = format!("kind: Namespace\nmetadata: {{name: a}}\n---\n{POLICY}");
        let origin = crate::model::Origin {
            source: "f.yaml".into(),
            line: 3,
            item: None,
        };
        let mut findings = vec![
            Diagnostic::error("unknown-field", "x")
                .at(&origin)
                .field("spec.ingres"),
            Diagnostic::error("x", "no field").at(&origin),
            Diagnostic::error("unknown-field", "other file")
                .at(&crate::model::Origin {
                    source: "g.yaml".into(),
                    ..origin.clone()
                })
                .field("spec.ingres"),
        ];
        point_at_fields(&mut findings, "f.yaml", &text);
        let lines: Vec<usize> = findings
            .iter()
            .map(|f| f.origin.as_ref().map_or(0, |o| o.line))
            .collect();
        assert_eq!(
            lines,
            [11, 3, 3],
            "line 3 is `---`, line 4 the policy's first; ingres: is its line 8"
        );
    }

    #[test]
    fn list_items_count_from_the_list() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- kind: Namespace\n  metadata: {name: a}\n- kind: Pod\n  metadata:\n    name: p\n  spec: {containers: 1}\n";
        let mut findings = vec![
            Diagnostic::error("x", "y")
                .at(&crate::model::Origin {
                    source: "l.yaml".into(),
                    line: 1,
                    item: Some(1),
                })
                .field("spec.containers"),
        ];
        point_at_fields(&mut findings, "l.yaml", text);
        assert_eq!(findings[0].origin.as_ref().map(|o| o.line), Some(9));
    }
}
