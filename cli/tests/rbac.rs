//! Authorization on a secure cluster, from the outside: each built-in
//! role against each verb on a namespaced and a cluster-scoped kind,
//! `berth auth can-i` agreeing with what the API does, roles and bindings
//! that cannot grant more than their author holds, and a node that may act
//! only for itself.

use std::path::Path;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::Object;
use berth_client::Transport;
use berth_proto::security as spb;
use berth_proto::security::access_client::AccessClient;
use berth_testkit::eventually;
use berth_testkit::objects;
use berth_testkit::objects::delete_req;
use berth_testkit::objects::get_req;
use berth_testkit::objects::list_req;
use berth_testkit::Cluster;
use berth_testkit::ServerFlags;
use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;

const T: Duration = Duration::from_secs(30);
const VERBS: [&str; 6] = ["get", "list", "watch", "create", "update", "delete"];

fn meta(namespace: &str, name: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    })
}

/// RoleBinding USER-ROLE in `namespace` of user `user` to `role`.
fn user_binding(namespace: &str, user: &str, kind: &str, role: &str) -> pb::RoleBinding {
    let name = format!("{user}-{role}");
    objects::role_binding(namespace, &name, objects::user(user), kind, role)
}

async fn connect(cluster: &Cluster, transport: &Transport) -> Channel {
    berth_client::connect::connect(&cluster.addrs(), transport)
        .await
        .expect("connect")
        .1
}

/// Each verb of VERBS on objects of K in `namespace`, as the holder of
/// `ch`: `existing` is read, listed, watched and updated; `fresh` is
/// created and deleted. Whether each was allowed (any refusal other than
/// PERMISSION_DENIED is a failure).
async fn attempt<K: ClientKind>(
    ch: &Channel,
    namespace: &str,
    existing: &K,
    fresh: &K,
) -> Vec<bool> {
    let mut unversioned = existing.clone();
    unversioned.meta_mut().resource_version.clear();
    let watch = pb::WatchRequest {
        namespace: namespace.into(),
        ..Default::default()
    };
    let results: Vec<Result<(), Status>> = vec![
        K::get(ch.clone(), get_req(namespace, existing.name()))
            .await
            .map(drop),
        K::list(ch.clone(), list_req(namespace, "")).await.map(drop),
        K::watch(ch.clone(), watch).await.map(drop),
        K::create(ch.clone(), fresh.clone()).await.map(drop),
        K::update(ch.clone(), unversioned).await.map(drop),
        K::delete(ch.clone(), delete_req(namespace, fresh.name()))
            .await
            .map(drop),
    ];
    results
        .into_iter()
        .zip(VERBS)
        .map(|(r, verb)| match r {
            Ok(()) => true,
            Err(s) if s.code() == Code::PermissionDenied => {
                assert!(
                    s.message().starts_with("forbidden: "),
                    "{verb}: {}",
                    s.message()
                );
                false
            }
            Err(s) => panic!("{verb} {}: {s}", K::INFO.plural),
        })
        .collect()
}

/// What `Access.Review` says of each verb of VERBS.
async fn reviewed(ch: &Channel, info: &berth_api::KindInfo, namespace: &str) -> Vec<bool> {
    let mut answers = Vec::new();
    for verb in VERBS {
        let review = spb::AccessReview {
            verb: verb.into(),
            api_group: info.api_group().into(),
            resource: info.plural.into(),
            namespace: namespace.into(),
            ..Default::default()
        };
        let result = AccessClient::new(ch.clone()).review(review).await.unwrap();
        answers.push(result.into_inner().allowed);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_builtin_role_allows_exactly_its_verbs() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), ServerFlags::default()).await;
    let admin = cluster.channel().await;
    let mut team = pb::Namespace::default();
    team.meta_mut().name = "team".into();
    pb::Namespace::create(admin.clone(), team).await.unwrap();
    let settings = objects::configmap("settings").namespace("team").build();
    let settings = pb::ConfigMap::create(admin.clone(), settings)
        .await
        .unwrap();
    let password = objects::secret("password")
        .namespace("team")
        .string_data("password", "sesame")
        .build();
    let password = pb::Secret::create(admin.clone(), password).await.unwrap();
    let elsewhere = objects::configmap("elsewhere").build();
    let elsewhere = pb::ConfigMap::create(admin.clone(), elsewhere)
        .await
        .unwrap();
    let node = pb::Node::create(admin.clone(), objects::node("rbac-node").build())
        .await
        .unwrap();
    for (user, role) in [("viewer", "view"), ("editor", "edit"), ("nsadmin", "admin")] {
        pb::RoleBinding::create(
            admin.clone(),
            user_binding("team", user, "ClusterRole", role),
        )
        .await
        .unwrap();
    }
    let ops =
        objects::cluster_role_binding("ops-cluster-admin", objects::user("ops"), "cluster-admin");
    pb::ClusterRoleBinding::create(admin.clone(), ops)
        .await
        .unwrap();

    let all = [true; 6];
    let none = [false; 6];
    let read = [true, true, true, false, false, false];
    // (user, configmaps in team, secrets in team, configmaps in default,
    // nodes): view reads no Secrets.
    let expected = [
        ("viewer", read, none, none, none),
        ("editor", all, all, none, none),
        ("nsadmin", all, all, none, none),
        ("ops", all, all, all, all),
        ("nobody", none, none, none, none),
    ];
    for (user, in_team, secrets, in_default, nodes) in expected {
        let (_, transport) = cluster.user(root.path(), user, &[]);
        let ch = connect(&cluster, &transport).await;
        let fresh = |ns: &str| {
            objects::configmap(&format!("new-{user}"))
                .namespace(ns)
                .build()
        };
        let fresh_node = objects::node(&format!("node-{user}")).build();
        let fresh_secret = objects::secret(&format!("new-{user}"))
            .namespace("team")
            .build();
        let cases = [
            (
                "configmaps in team",
                attempt(&ch, "team", &settings, &fresh("team")).await,
                in_team,
            ),
            (
                "secrets in team",
                attempt(&ch, "team", &password, &fresh_secret).await,
                secrets,
            ),
            (
                "configmaps in default",
                attempt(&ch, "default", &elsewhere, &fresh("default")).await,
                in_default,
            ),
            ("nodes", attempt(&ch, "", &node, &fresh_node).await, nodes),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{user}: {VERBS:?} on {what}");
        }
        let cm = &<pb::ConfigMap as Object>::INFO;
        assert_eq!(
            reviewed(&ch, cm, "team").await,
            in_team,
            "{user} reviews configmaps in team"
        );
        assert_eq!(
            reviewed(&ch, cm, "default").await,
            in_default,
            "{user} reviews configmaps in default"
        );
        assert_eq!(
            reviewed(&ch, &<pb::Secret as Object>::INFO, "team").await,
            secrets,
            "{user} reviews secrets in team"
        );
        let nodes_info = &<pb::Node as Object>::INFO;
        assert_eq!(
            reviewed(&ch, nodes_info, "").await,
            nodes,
            "{user} reviews nodes"
        );
    }

    // The refusal names who, what and where, as Kubernetes' does.
    let (_, viewer) = cluster.user(root.path(), "viewer2", &["readers"]);
    let group_binding = objects::role_binding(
        "team",
        "readers-view",
        objects::group("readers"),
        "ClusterRole",
        "view",
    );
    pb::RoleBinding::create(admin.clone(), group_binding)
        .await
        .unwrap();
    let ch = connect(&cluster, &viewer).await;
    pb::ConfigMap::get(ch.clone(), get_req("team", "settings"))
        .await
        .expect("a group binding grants its members");
    let err = pb::ConfigMap::create(ch, objects::configmap("x").namespace("team").build())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "forbidden: viewer2 cannot create configmaps in namespace team"
    );

    // Removing a binding takes its grant away.
    pb::RoleBinding::delete(admin.clone(), delete_req("team", "editor-edit"))
        .await
        .unwrap();
    let (_, editor) = cluster.user(root.path(), "editor", &[]);
    let ch = connect(&cluster, &editor).await;
    eventually("the editor's grant is gone", T, || {
        let ch = ch.clone();
        async move {
            pb::ConfigMap::get(ch, get_req("team", "settings"))
                .await
                .is_err_and(|s| s.code() == Code::PermissionDenied)
        }
    })
    .await;
}

fn run(cmd: &mut std::process::Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

async fn bind(cluster: &Cluster, binding: pb::RoleBinding) {
    pb::RoleBinding::create(cluster.channel().await, binding)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn can_i_answers_and_roles_cannot_grant_more_than_their_author_holds() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), ServerFlags::default()).await;
    let dir: &Path = root.path();
    bind(
        &cluster,
        user_binding("default", "dana", "ClusterRole", "admin"),
    )
    .await;
    let (dana_conf, dana) = cluster.user(dir, "dana", &[]);

    // can-i: yes and exit 0, no and exit 1; --as needs impersonation.
    let can_i = |conf: &Path, args: &[&str]| {
        let mut cmd = cluster.cli_as(conf);
        cmd.args(["auth", "can-i"]).args(args);
        run(&mut cmd)
    };
    assert_eq!(
        can_i(&dana_conf, &["create", "deployments.apps"]),
        (Some(0), "yes".into(), String::new())
    );
    assert_eq!(can_i(&dana_conf, &["list", "nodes"]).0, Some(1));
    assert_eq!(can_i(&dana_conf, &["list", "nodes"]).1, "no");
    assert_eq!(
        can_i(&dana_conf, &["get", "pods", "-n", "kube-system"]).1,
        "no"
    );
    assert_eq!(
        can_i(&dana_conf, &["update", "pods", "--subresource", "status"]).1,
        "no"
    );
    assert_eq!(can_i(&dana_conf, &["get", "secrets"]).1, "yes");
    let admin_conf = cluster.admin_conf();
    assert_eq!(can_i(&admin_conf, &["*", "*"]).1, "yes");
    assert_eq!(
        can_i(&admin_conf, &["delete", "pods", "--as", "dana"]).1,
        "yes"
    );
    assert_eq!(
        can_i(&admin_conf, &["delete", "pods", "--as", "erin"]).1,
        "no"
    );
    assert_eq!(
        can_i(
            &admin_conf,
            &[
                "delete",
                "nodes",
                "--as",
                "erin",
                "--as-group",
                "system:masters"
            ]
        )
        .1,
        "yes"
    );
    let (code, _, err) = can_i(&dana_conf, &["delete", "pods", "--as", "admin"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("forbidden: dana cannot impersonate users"),
        "{err}"
    );

    // A namespace admin passes on what it holds, and nothing more.
    let ch = connect(&cluster, &dana).await;
    pb::RoleBinding::create(
        ch.clone(),
        user_binding("default", "erin", "ClusterRole", "edit"),
    )
    .await
    .expect("admin may grant edit in its namespace");
    let err = pb::RoleBinding::create(
        ch.clone(),
        user_binding("default", "erin", "ClusterRole", "cluster-admin"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("cannot grant what it does not hold in namespace default"),
        "{}",
        err.message()
    );
    let node_reader = pb::Role {
        metadata: meta("default", "node-reader"),
        rules: vec![objects::core_rule(&["get"], &["nodes", "pods"])],
        ..Default::default()
    };
    let err = pb::Role::create(ch.clone(), node_reader).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("get nodes"), "{}", err.message());
    assert!(!err.message().contains("get pods"), "{}", err.message());
    let crb =
        objects::cluster_role_binding("dana-everything", objects::user("dana"), "cluster-admin");
    let err = pb::ClusterRoleBinding::create(ch.clone(), crb)
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "forbidden: dana cannot create clusterrolebindings at the cluster scope"
    );

    // Placing a pod is the scheduler's: spec.nodeName at create needs
    // pods/binding, which edit and admin do not hold.
    let placed = objects::pod("placed").build();
    let mut placed = placed;
    placed.spec.get_or_insert_default().node_name = "somewhere".into();
    let err = pb::Pod::create(ch.clone(), placed).await.unwrap_err();
    assert_eq!(
        err.message(),
        "forbidden: dana cannot create pods/binding in namespace default"
    );
    pb::Pod::create(ch.clone(), objects::pod("unplaced").build())
        .await
        .expect("admin creates pods for the scheduler to place");

    // Membership and join tokens are for cluster-admin, by any binding.
    let (code, _, err) = run(cluster
        .cli_as(&dana_conf)
        .args(["token", "create", "--role", "agent"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("forbidden: dana cannot call"), "{err}");
    let ops =
        objects::cluster_role_binding("dana-cluster-admin", objects::user("dana"), "cluster-admin");
    pb::ClusterRoleBinding::create(cluster.channel().await, ops)
        .await
        .unwrap();
    let (code, token, err) = run(cluster
        .cli_as(&dana_conf)
        .args(["token", "create", "--role", "agent"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(token.starts_with("BERTH1-"), "{token}");

    // The built-in roles are objects, listed as kubectl lists them.
    let (code, out, err) = run(cluster.cli().args(["get", "clusterroles"]));
    assert_eq!(code, Some(0), "{err}");
    for role in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:kube-scheduler",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{role} "))),
            "{role} in:\n{out}"
        );
    }
    let (_, out, _) = run(cluster.cli().args(["get", "rolebindings", "-o", "wide"]));
    assert!(
        out.contains("dana-admin") && out.contains("ClusterRole/admin") && out.contains("dana"),
        "{out}"
    );
}

/// How node `name`'s agent reaches the cluster: credentials as a join
/// would give it.
fn node_transport(cluster: &Cluster, dir: &Path, name: &str) -> Transport {
    let path = dir.join(format!("{name}.conf"));
    berth_testkit::tls::write_agent_conf(
        cluster.data_dir(1),
        &path,
        name,
        "127.0.0.1",
        &cluster.addrs(),
    )
    .unwrap();
    berth_client::credentials::load(&path, None)
        .unwrap()
        .transport
}

fn pod_on(name: &str, node: &str) -> pb::Pod {
    let mut pod = objects::pod(name).build();
    pod.spec.get_or_insert_default().node_name = node.into();
    pod
}

fn lease(name: &str) -> pb::Lease {
    pb::Lease {
        metadata: meta("berth-system", name),
        ..Default::default()
    }
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, Status>) {
    match r {
        Err(s) if s.code() == Code::PermissionDenied => {}
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_may_act_only_for_itself() {
    let _serial = berth_testkit::serial().await;
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::ready(root.path(), ServerFlags::default()).await;
    let admin = cluster.channel().await;
    let n1 = connect(&cluster, &node_transport(&cluster, root.path(), "n1")).await;

    // Its own Node and lease; not another's.
    pb::Node::create(n1.clone(), objects::node("n1").build())
        .await
        .expect("a node registers itself");
    denied(
        "create another node",
        pb::Node::create(n1.clone(), objects::node("n2").build()).await,
    );
    pb::Node::create(admin.clone(), objects::node("n2").build())
        .await
        .unwrap();
    let n2 = pb::Node::get(admin.clone(), get_req("", "n2"))
        .await
        .unwrap();
    denied(
        "update another node's status",
        berth_client::objects::nodes::update_status(n1.clone(), n2).await,
    );
    denied(
        "delete another node",
        pb::Node::delete(n1.clone(), delete_req("", "n2")).await,
    );
    let mut own = pb::Node::get(n1.clone(), get_req("", "n1")).await.unwrap();
    own.meta_mut().resource_version.clear();
    own.meta_mut()
        .labels
        .insert("node-restriction.kubernetes.io/tier".into(), "gold".into());
    let err = pb::Node::update(n1.clone(), own).await.unwrap_err();
    assert!(
        err.message().contains("node-restriction.kubernetes.io/"),
        "{}",
        err.message()
    );
    pb::Lease::create(n1.clone(), lease("node-n1"))
        .await
        .expect("its own lease");
    denied(
        "another node's lease",
        pb::Lease::create(n1.clone(), lease("node-n2")).await,
    );
    denied(
        "the scheduler's lease",
        pb::Lease::create(n1.clone(), lease("berth-scheduler")).await,
    );

    // The pods bound to it, and no others.
    pb::Pod::create(admin.clone(), pod_on("mine", "n1"))
        .await
        .unwrap();
    pb::Pod::create(admin.clone(), pod_on("theirs", "n2"))
        .await
        .unwrap();
    let selected = |node: &str| pb::ListRequest {
        field_selector: format!("spec.nodeName={node}"),
        ..Default::default()
    };
    let (pods, _) = pb::Pod::list(n1.clone(), selected("n1")).await.unwrap();
    assert_eq!(pods.iter().map(|p| p.name()).collect::<Vec<_>>(), ["mine"]);
    denied(
        "list another node's pods",
        pb::Pod::list(n1.clone(), selected("n2")).await,
    );
    denied(
        "list every pod",
        pb::Pod::list(n1.clone(), Default::default()).await,
    );
    let watch = pb::WatchRequest {
        field_selector: "spec.nodeName=n1".into(),
        ..Default::default()
    };
    let _events = pb::Pod::watch(n1.clone(), watch)
        .await
        .expect("watch its own pods");
    let mut mine = pb::Pod::get(n1.clone(), get_req("default", "mine"))
        .await
        .unwrap();
    mine.status.get_or_insert_default().phase = "Running".into();
    berth_client::objects::pods::update_status(n1.clone(), mine)
        .await
        .expect("report its own pod's status");
    denied(
        "read another node's pod",
        pb::Pod::get(n1.clone(), get_req("default", "theirs")).await,
    );
    let mut theirs = pb::Pod::get(admin.clone(), get_req("default", "theirs"))
        .await
        .unwrap();
    theirs.status.get_or_insert_default().phase = "Failed".into();
    denied(
        "another node's pod status",
        berth_client::objects::pods::update_status(n1.clone(), theirs).await,
    );
    denied(
        "create a pod",
        pb::Pod::create(n1.clone(), pod_on("planted", "n1")).await,
    );

    // No ConfigMap or Secret while none of its pods names one; no
    // namespace, no RBAC, nothing internal.
    pb::ConfigMap::create(admin.clone(), objects::configmap("settings").build())
        .await
        .unwrap();
    denied(
        "read a ConfigMap",
        pb::ConfigMap::get(n1.clone(), get_req("default", "settings")).await,
    );
    let secret = objects::secret("password").string_data("p", "sesame");
    pb::Secret::create(admin.clone(), secret.build())
        .await
        .unwrap();
    denied(
        "read a Secret",
        pb::Secret::get(n1.clone(), get_req("default", "password")).await,
    );
    denied(
        "list Secrets",
        pb::Secret::list(n1.clone(), Default::default()).await,
    );

    // Those its own pods name, and only those: n2's pod names `password`
    // too, which lets n1 read nothing.
    let named = objects::container("main")
        .env_from_source("P", objects::secret_key("password", "p"))
        .env_from("", objects::EnvFrom::ConfigMap("settings"))
        .build();
    let mut theirs_naming = pod_on("theirs-naming", "n2");
    theirs_naming.spec.get_or_insert_default().containers = vec![named.clone()];
    pb::Pod::create(admin.clone(), theirs_naming).await.unwrap();
    denied(
        "read a Secret another node's pod names",
        pb::Secret::get(n1.clone(), get_req("default", "password")).await,
    );
    let mut naming = pod_on("naming", "n1");
    naming.spec.get_or_insert_default().containers = vec![named];
    pb::Pod::create(admin.clone(), naming).await.unwrap();
    let read = pb::Secret::get(n1.clone(), get_req("default", "password"))
        .await
        .expect("read a Secret its own pod names");
    assert!(read.data.contains_key("p"));
    pb::ConfigMap::get(n1.clone(), get_req("default", "settings"))
        .await
        .expect("read a ConfigMap its own pod names");
    let other = objects::secret("other").string_data("p", "x");
    pb::Secret::create(admin.clone(), other.build())
        .await
        .unwrap();
    denied(
        "read a Secret no pod of its own names",
        pb::Secret::get(n1.clone(), get_req("default", "other")).await,
    );
    denied(
        "list Secrets with one named",
        pb::Secret::list(n1.clone(), Default::default()).await,
    );
    let mut changed = read.clone();
    changed.data.insert("q".into(), "eA==".into());
    denied(
        "update a Secret its own pod names",
        pb::Secret::update(n1.clone(), changed).await,
    );
    pb::Pod::delete(admin.clone(), delete_req("default", "naming"))
        .await
        .unwrap();
    eventually(
        "the Secret is closed to n1 once its pod is gone",
        T,
        || async {
            pb::Secret::get(n1.clone(), get_req("default", "password"))
                .await
                .is_err_and(|s| s.code() == Code::PermissionDenied)
        },
    )
    .await;
    denied(
        "list namespaces",
        pb::Namespace::list(n1.clone(), Default::default()).await,
    );
    denied(
        "list cluster roles",
        pb::ClusterRole::list(n1.clone(), Default::default()).await,
    );
    let err = pb::Pod::get(n1.clone(), get_req("default", "theirs"))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "forbidden: system:node:n1 cannot get pods in namespace default"
    );

    // can-i as the node says the same.
    let as_node = |verb: &str, kind: &str| {
        let mut cmd = cluster.cli();
        cmd.args([
            "auth",
            "can-i",
            verb,
            kind,
            "--as",
            "system:node:n1",
            "--as-group",
            "system:nodes",
        ]);
        run(&mut cmd).1
    };
    assert_eq!(as_node("watch", "nodes"), "yes");
    assert_eq!(as_node("update", "nodes/n1"), "yes");
    assert_eq!(as_node("update", "nodes/n2"), "no");
    assert_eq!(as_node("get", "configmaps"), "no");
}
