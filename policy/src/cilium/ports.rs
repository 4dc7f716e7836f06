//! `toPorts[].ports`: numbers, numeric strings, named ports, `"0"`, protocols and `endPort`.

use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{PortMatch, PortSpec, Protocol};
use crate::names;
use crate::validate::FieldErrors;

use super::wire::*;

/// `toPorts[].ports`: an empty list means every port of every protocol.
pub(super) fn ports(list: &[PortProtocol], field: &str, errs: &mut FieldErrors) -> Vec<PortSpec> {
    if list.is_empty() {
        return Protocol::ALL
            .iter()
            .map(|p| PortSpec {
                protocol: *p,
                port: PortMatch::Any,
            })
            .collect();
    }
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}.ports[{i}]");
        let protocols: Vec<Protocol> = match p
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("ANY") | Some("") => Protocol::ALL.to_vec(),
            Some(other) => match Protocol::from_str(other) {
                Ok(proto) => vec![proto],
                Err(_) => {
                    errs.unsupported(
                        format!("{f}.protocol"),
                        p.protocol.as_deref().unwrap_or_default(),
                        &["TCP", "UDP", "SCTP", "ANY"],
                    );
                    continue;
                }
            },
        };
        let port = match &p.port {
            None => Some(PortMatch::Any),
            Some(IntOrString::Int(n)) => number_port(i64::from(*n), p.end_port, &f, errs),
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => number_port(n, p.end_port, &f, errs),
                Err(_) => match names::check_port_name(s) {
                    Ok(()) if p.end_port.is_none() => Some(PortMatch::Named(s.clone())),
                    Ok(()) => {
                        errs.invalid(
                            format!("{f}.endPort"),
                            p.end_port,
                            "may not be specified when `port` is non-numeric",
                        );
                        None
                    }
                    Err(e) => {
                        errs.invalid(format!("{f}.port"), s, &e);
                        None
                    }
                },
            },
        };
        if let Some(port) = port {
            for protocol in protocols {
                out.push(PortSpec {
                    protocol,
                    port: port.clone(),
                });
            }
        }
    }
    out
}

pub(super) fn number_port(
    n: i64,
    end: Option<i32>,
    field: &str,
    errs: &mut FieldErrors,
) -> Option<PortMatch> {
    if n == 0 && end.is_none() {
        return Some(PortMatch::Any);
    }
    let lo = names::check_port_number(n)
        .map_err(|e| errs.invalid(format!("{field}.port"), n, &e))
        .ok()?;
    let hi = match end {
        None => lo,
        Some(e) => {
            let hi = names::check_port_number(i64::from(e))
                .map_err(|m| errs.invalid(format!("{field}.endPort"), e, &m))
                .ok()?;
            if hi < lo {
                errs.invalid(
                    format!("{field}.endPort"),
                    e,
                    "must be greater than or equal to `port`",
                );
                return None;
            }
            hi
        }
    };
    Some(PortMatch::Range(lo, hi))
}
