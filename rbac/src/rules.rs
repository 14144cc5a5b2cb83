//! Who asks, what they ask for, and whether one rule covers it, with
//! Kubernetes' wildcard semantics.

use berth_api::pb::PolicyRule;

const ALL: &str = "*";

/// An authenticated caller: a user name and its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn in_group(&self, group: &str) -> bool {
        group == crate::AUTHENTICATED_GROUP || self.groups.iter().any(|g| g == group)
    }
}

/// One thing a caller asks to do, as Kubernetes' authorizer attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub api_group: String,
    /// A plural: `pods`.
    pub resource: String,
    /// `status`, `binding`, or empty.
    pub subresource: String,
    /// Empty for a cluster-scoped resource, or a request across every
    /// namespace.
    pub namespace: String,
    /// Empty for a request that names no object (create, list, watch).
    pub name: String,
}

impl Attributes {
    /// `pods` or `pods/status`: how rules name the resource.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

fn has(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == ALL || x == item)
}

/// Whether `rule` grants `verb` on `resource` (`plural` or
/// `plural/subresource`) of `group`, for the object `name` (None: no
/// single object). Used for requests and, with the values of another
/// rule taken literally (so only "*" covers "*"), for escalation checks.
pub(crate) fn grants(
    rule: &PolicyRule,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    has(&rule.verbs, verb)
        && has(&rule.api_groups, group)
        && resource_matches(&rule.resources, resource)
        && (rule.resource_names.is_empty()
            || name.is_some_and(|n| rule.resource_names.iter().any(|r| r == n)))
}

fn resource_matches(resources: &[String], resource: &str) -> bool {
    if has(resources, resource) {
        return true;
    }
    resource
        .split_once('/')
        .is_some_and(|(_, sub)| resources.iter().any(|r| r.strip_prefix("*/") == Some(sub)))
}

/// Every single grant a rule makes: one per verb, group, resource and
/// name (None when the rule names none).
pub(crate) fn atoms(rule: &PolicyRule) -> impl Iterator<Item = Atom<'_>> + '_ {
    let names: Vec<Option<&str>> = if rule.resource_names.is_empty() {
        vec![None]
    } else {
        rule.resource_names
            .iter()
            .map(|n| Some(n.as_str()))
            .collect()
    };
    rule.verbs.iter().flat_map(move |verb| {
        let names = names.clone();
        rule.api_groups.iter().flat_map(move |group| {
            let names = names.clone();
            rule.resources.iter().flat_map(move |resource| {
                names.clone().into_iter().map(move |name| Atom {
                    verb,
                    group,
                    resource,
                    name,
                })
            })
        })
    })
}

/// One verb on one resource of one group, for one name or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Atom<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub name: Option<&'a str>,
}

impl Atom<'_> {
    pub fn granted_by(&self, rule: &PolicyRule) -> bool {
        grants(rule, self.verb, self.group, self.resource, self.name)
    }

    pub fn to_rule(self) -> PolicyRule {
        PolicyRule {
            verbs: vec![self.verb.to_string()],
            api_groups: vec![self.group.to_string()],
            resources: vec![self.resource.to_string()],
            resource_names: self.name.map(str::to_string).into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PolicyRule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
        }
    }

    #[test]
    fn wildcards_and_subresources_match_as_in_kubernetes() {
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(grants(&pods, "get", "", "pods", Some("p")));
        assert!(grants(&pods, "list", "", "pods", None));
        assert!(!grants(&pods, "delete", "", "pods", Some("p")));
        assert!(!grants(&pods, "get", "apps", "pods", Some("p")));
        // A resource does not cover its subresources.
        assert!(!grants(&pods, "get", "", "pods/status", Some("p")));
        let status = rule(&["update"], &["*"], &["*/status"], &[]);
        assert!(grants(
            &status,
            "update",
            "apps",
            "deployments/status",
            Some("d")
        ));
        assert!(!grants(&status, "update", "apps", "deployments", Some("d")));
        let all = rule(&["*"], &["*"], &["*"], &[]);
        assert!(grants(
            &all,
            "delete",
            "rbac.authorization.k8s.io",
            "roles",
            None
        ));
        assert!(grants(&all, "update", "", "pods/status", Some("p")));
        let named = rule(&["get"], &[""], &["configmaps"], &["settings"]);
        assert!(grants(&named, "get", "", "configmaps", Some("settings")));
        assert!(!grants(&named, "get", "", "configmaps", Some("other")));
        // A list names no object, so a rule for some names does not allow it.
        assert!(!grants(&named, "list", "", "configmaps", None));
    }

    #[test]
    fn a_rule_breaks_into_one_atom_per_grant() {
        let r = rule(&["get", "list"], &["", "apps"], &["pods"], &["a", "b"]);
        assert_eq!(atoms(&r).count(), 8);
        let all = rule(&["*"], &["*"], &["*"], &[]);
        let atom = atoms(&all).next().unwrap();
        assert_eq!(atom.to_rule(), all);
        // Taken literally, "*" is covered only by "*".
        assert!(!atom.granted_by(&rule(&["get"], &["*"], &["*"], &[])));
        assert!(atom.granted_by(&all));
    }
}
