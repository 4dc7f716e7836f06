//! Field errors in the API server's words, and the label-selector checks every policy kind shares.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use crate::names;
use crate::selector::{LabelSelector, Operator, Requirement};

/// One invalid field, worded like the API server's `field.Error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// The field path (`spec.ingress[0].ports[1].endPort`).
    pub(crate) field: String,
    /// What is wrong with it.
    pub(crate) message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The errors found in one object.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldErrors(pub(crate) Vec<FieldError>);

impl FieldErrors {
    /// `Invalid value: <value>: <detail>`.
    pub(crate) fn invalid(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Debug,
        detail: &str,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            message: format!("Invalid value: {value:?}: {detail}"),
        });
    }

    /// `Unsupported value: <value>: supported values: ...`.
    pub(crate) fn unsupported(
        &mut self,
        field: impl Into<String>,
        value: &str,
        supported: &[&str],
    ) {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.0.push(FieldError {
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
        });
    }

    /// `Required value: <detail>`.
    pub(crate) fn required(&mut self, field: impl Into<String>, detail: &str) {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.0.push(FieldError {
            field: field.into(),
            message,
        });
    }

    /// `Forbidden: <detail>`.
    pub(crate) fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.0.push(FieldError {
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        });
    }

    /// True when nothing was wrong.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Converts and validates a label selector (`matchLabels`, `matchExpressions`) as
/// apimachinery's `ValidateLabelSelector` does.
pub(crate) fn label_selector(
    selector: &meta::LabelSelector,
    field: &str,
    errs: &mut FieldErrors,
) -> LabelSelector {
    let mut requirements = Vec::new();
    if let Some(labels) = &selector.match_labels {
        for (key, value) in labels {
            let key_field = format!("{field}.matchLabels");
            if let Err(e) = names::check_label_key(key) {
                errs.invalid(&key_field, key, &e);
            }
            if let Err(e) = names::check_label_value(value) {
                errs.invalid(&key_field, value, &e);
            }
            requirements.push(Requirement::equals(key.clone(), value.clone()));
        }
    }
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let expr_field = format!("{field}.matchExpressions[{i}]");
        if let Err(e) = names::check_label_key(&expr.key) {
            errs.invalid(format!("{expr_field}.key"), &expr.key, &e);
        }
        let values = expr.values.clone().unwrap_or_default();
        let operator = match expr.operator.as_str() {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            other => {
                errs.unsupported(
                    format!("{expr_field}.operator"),
                    other,
                    &["In", "NotIn", "Exists", "DoesNotExist"],
                );
                None
            }
        };
        match operator {
            Some(Operator::In | Operator::NotIn) if values.is_empty() => errs.required(
                format!("{expr_field}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            Some(Operator::Exists | Operator::DoesNotExist) if !values.is_empty() => errs
                .forbidden(
                    format!("{expr_field}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ),
            _ => {}
        }
        for (j, value) in values.iter().enumerate() {
            if let Err(e) = names::check_label_value(value) {
                errs.invalid(format!("{expr_field}.values[{j}]"), value, &e);
            }
        }
        if let Some(operator) = operator {
            let mut values = values;
            values.sort();
            values.dedup();
            requirements.push(Requirement {
                key: expr.key.clone(),
                operator,
                values,
            });
        }
    }
    LabelSelector { requirements }
}
