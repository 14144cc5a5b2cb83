//! Label selectors (`app=web,tier!=db`, `env in (a,b)`, `!canary`, `team`)
//! and field selectors (`spec.nodeName=NAME`), parsed once and matched
//! against objects.

use std::collections::BTreeMap;

use crate::names::is_label_key;
use crate::names::is_label_value;
use crate::pb;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct BadSelector {
    pub selector: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, BadSelector> {
        let bad = |reason: String| BadSelector {
            selector: text.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = parse_requirement(part).map_err(bad)?;
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// The selector of a Deployment or a pod anti-affinity term.
    pub fn from_proto(sel: &pb::LabelSelector) -> Result<Self, BadSelector> {
        let mut requirements: Vec<Requirement> = sel
            .match_labels
            .iter()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
            .collect();
        for e in &sel.match_expressions {
            let bad = |reason: &str| BadSelector {
                selector: format!("{} {} {:?}", e.key, e.operator, e.values),
                reason: reason.to_string(),
            };
            let req = match e.operator.as_str() {
                "In" if !e.values.is_empty() => Requirement::In(e.key.clone(), e.values.clone()),
                "NotIn" if !e.values.is_empty() => {
                    Requirement::NotIn(e.key.clone(), e.values.clone())
                }
                "Exists" if e.values.is_empty() => Requirement::Exists(e.key.clone()),
                "DoesNotExist" if e.values.is_empty() => Requirement::DoesNotExist(e.key.clone()),
                "In" | "NotIn" => return Err(bad("In and NotIn need at least one value")),
                "Exists" | "DoesNotExist" => {
                    return Err(bad("Exists and DoesNotExist take no values"))
                }
                _ => {
                    return Err(bad(
                        "the operator must be In, NotIn, Exists or DoesNotExist",
                    ))
                }
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if is_label_key(k) {
        Ok(k.to_string())
    } else {
        Err(format!("{k:?} is not a valid label key"))
    }
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    if is_label_value(v) {
        Ok(v.to_string())
    } else {
        Err(format!("{v:?} is not a valid label value"))
    }
}

fn set_values(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or("a set must be written as (a,b,c)")?;
    let values: Result<Vec<String>, String> = inner.split(',').map(value).collect();
    let values = values?;
    if values.iter().all(String::is_empty) {
        return Err("a set needs at least one value".into());
    }
    Ok(values)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once("==") {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once('=') {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    let words: Vec<&str> = part.splitn(3, char::is_whitespace).collect();
    match words.as_slice() {
        [k] => Ok(Requirement::Exists(key(k)?)),
        [k, op, rest] if op.eq_ignore_ascii_case("in") => Ok(Requirement::In(key(k)?, set_values(rest)?)),
        [k, op, rest] if op.eq_ignore_ascii_case("notin") => {
            Ok(Requirement::NotIn(key(k)?, set_values(rest)?))
        }
        _ => Err(format!(
            "cannot read {part:?}: use key=value, key!=value, key in (a,b), key notin (a,b), key or !key"
        )),
    }
}

/// Fields a list or watch can select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    NodeName,
    Name,
    Namespace,
}

/// A parsed field selector: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(Field, bool, String)>,
}

impl FieldSelector {
    pub fn parse(text: &str, kind_has_node_name: bool) -> Result<Self, BadSelector> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |reason: String| BadSelector {
                selector: text.to_string(),
                reason,
            };
            let (name, equal, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(bad(format!("{part:?} needs = or !=")));
            };
            let field = match name.trim() {
                "spec.nodeName" if kind_has_node_name => Field::NodeName,
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => {
                    return Err(bad(format!(
                        "field {other:?} is not supported; use spec.nodeName (pods), metadata.name or metadata.namespace"
                    )))
                }
            };
            terms.push((field, equal, value.trim().to_string()));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// `get(field)` returns the object's value of that field.
    pub fn matches(&self, get: impl Fn(Field) -> String) -> bool {
        self.terms
            .iter()
            .all(|(field, equal, value)| (get(*field) == *value) == *equal)
    }

    /// The node a selector pins `spec.nodeName` to, if any.
    pub fn node_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, eq, _)| *f == Field::NodeName && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_match_as_in_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier!=db"));
        assert!(m("app in (web, api)"));
        assert!(!m("app notin (web)"));
        assert!(m("tier"));
        assert!(m("!canary"));
        assert!(!m("app=api"));
        assert!(!m("canary"));
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for s in ["app in web", "a b c d", "=x", "app=-bad-", "app in ()"] {
            assert!(LabelSelector::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("spec.nodeName=n1", true).unwrap();
        assert_eq!(f.node_name(), Some("n1"));
        assert!(f.matches(|_| "n1".into()));
        assert!(!f.matches(|_| "n2".into()));
        let pending = FieldSelector::parse("spec.nodeName=", true).unwrap();
        assert!(pending.matches(|_| String::new()));
        assert!(FieldSelector::parse("spec.nodeName=n1", false).is_err());
        assert!(FieldSelector::parse("status.phase=Running", true).is_err());
    }
}
