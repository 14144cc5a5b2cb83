//! Pod networking end to end, inside network namespaces this test makes
//! and removes: a fabric namespace with a bridge (the "switch") where the
//! three controllers listen, and three node namespaces linked to it, each
//! running an agent with `--network bridge` and the process runtime. An
//! echo server (busybox httpd answering its pod's name) runs one replica
//! per node behind a Service. The nodes carry Docker Engine's FORWARD
//! policy DROP, as real hosts with Docker do. Traffic goes only to
//! addresses inside these namespaces; nothing routes out of them.
//!
//! Also: address management never hands out a taken CIDR or ClusterIP,
//! including while the leader is killed.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::Object;
use berth_testkit::eventually;
use berth_testkit::flags::Network;
use berth_testkit::flags::Runtime;
use berth_testkit::netns::Fabric;
use berth_testkit::netns::Member;
use berth_testkit::objects;
use berth_testkit::objects::delete_req;
use berth_testkit::objects::get_req;
use berth_testkit::objects::list_req;
use berth_testkit::objects::pod_ip;
use berth_testkit::Agent;
use berth_testkit::AgentFlags;
use berth_testkit::Cluster;
use berth_testkit::ClusterOptions;
use berth_testkit::ServerFlags;
use prost::Message;
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(60);

/// Runs `cmd`, returning its stdout when it succeeds.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// iptables-nft's shape of Docker's forward rules: policy DROP, and a
/// jump to DOCKER-USER first.
const DOCKER_FORWARD_RULES: &[&str] = &[
    "add table ip filter",
    "add chain ip filter DOCKER-USER",
    "add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }",
    "add rule ip filter FORWARD jump DOCKER-USER",
];

/// A fabric of `nodes` node namespaces, each with what Docker Engine leaves
/// on a host: iptables' FORWARD policy DROP, and its DOCKER-USER chain for
/// others' rules.
fn node_fabric(nodes: usize) -> Fabric {
    let fabric = Fabric::create("bt", "10.250.0", nodes).expect("make the test's namespaces");
    for node in &fabric.members {
        for rule in DOCKER_FORWARD_RULES {
            node.exec("nft", &[rule])
                .expect("docker-like forward rules");
        }
    }
    fabric
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in ["ip", "nft", "nsenter", "busybox"] {
        if run(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

#[test]
fn pods_reach_pods_services_and_names_across_nodes() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED pods_reach_pods_services_and_names_across_nodes: {why}");
        return;
    }
    let fabric = node_fabric(3);
    fabric.block_on(|| fabric_test(&fabric));
}

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: echo}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: echo
        image: busybox
        command: ["/bin/sh", "-c", "busybox mkdir -p /tmp; d=$(mktemp -d) && echo $HOSTNAME > $d/index.html && exec busybox httpd -f -p 8080 -h $d"]
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 16Mi}}
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: http}]
"#;

/// What a GET of `http://addr/` from inside namespace `ns` answers.
fn fetch_from(ns: &Path, addr: &str) -> Result<String, String> {
    // busybox 1.35's `wget -T` crashes: coreutils' timeout bounds it.
    run(Command::new("timeout")
        .args(["5", "nsenter"])
        .arg(format!("--net={}", ns.display()))
        .args(["busybox", "wget", "-q", "-O", "-"])
        .arg(format!("http://{addr}/")))
    .map(|s| s.trim().to_string())
}

/// Pod names that answer at `addr` from `ns` over `tries` requests.
fn answers(ns: &Path, addr: &str, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .filter_map(|_| fetch_from(ns, addr).ok())
        .collect()
}

fn pod_netns(pod: &pb::Pod) -> PathBuf {
    let uid = pod.meta().map(|m| m.uid.clone()).unwrap_or_default();
    berth_agent::network::netns::path(&berth_agent::network::netns_name(&uid))
}

async fn echo_pods(ch: &Channel) -> Vec<pb::Pod> {
    let req = list_req("default", "app=echo");
    pb::Pod::list(ch.clone(), req).await.expect("list pods").0
}

async fn ready_endpoints(ch: &Channel) -> BTreeSet<String> {
    match pb::Endpoints::get(ch.clone(), get_req("default", "echo")).await {
        Ok(e) => e
            .subsets
            .iter()
            .flat_map(|s| &s.addresses)
            .map(|a| a.ip.clone())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The pid of the pod's running container process.
fn container_pid(agent_dir: &Path, pod: &pb::Pod) -> Option<i32> {
    let uid = pod.meta()?.uid.clone();
    let attempts = agent_dir.join("pods").join(uid).join("echo");
    std::fs::read_dir(attempts)
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
        .filter_map(|t| berth_agent::runtime::shim::PidRecord::parse(&t))
        .find(|p| p.is_alive())
        .map(|p| p.pid)
}

fn routes(node_ns: &str) -> String {
    run(Command::new("ip").args(["-n", node_ns, "route", "show"])).unwrap_or_default()
}

/// Agents with `--network bridge` and `runtime`, one in each of the
/// fabric's first `n` node namespaces, named after it.
fn node_agents(
    cluster: &Cluster,
    root: &Path,
    nodes: &[Member],
    runtime: Runtime,
    pause_image: Option<&str>,
) -> Vec<Agent> {
    nodes
        .iter()
        .map(|node| {
            let flags = AgentFlags {
                address: Some(node.ip.clone()),
                network: Some(Network::Bridge),
                dns_upstream: Some("none".into()),
                runtime,
                pause_image: pause_image.map(Into::into),
                ..Agent::flags(cluster, root, &node.netns)
            };
            Agent::start_with(cluster, root, flags, Some(&node.netns_path()))
                .expect("start berth agent")
        })
        .collect()
}

/// Three controllers listening on the fabric's bridge, whose raw store
/// takes API objects the API itself would refuse.
async fn fabric_cluster(fabric: &Fabric, root: &Path) -> Cluster {
    let flags = ServerFlags {
        passthrough: vec!["--unsafe-raw-registry-writes".into()],
        ..Default::default()
    };
    let options = ClusterOptions {
        host: Some(fabric.gateway.clone()),
        ..ClusterOptions::for_tests(flags)
    };
    Cluster::ready_with(root, options).await
}

/// Applies the echo deployment (`replicas`, `image`) and service, waits
/// until every replica is a ready endpoint, and returns the pods, each on
/// its own node with an address from the cluster CIDR.
async fn apply_echo(
    cluster: &Cluster,
    ch: &Channel,
    root: &Path,
    replicas: usize,
    image: &str,
) -> Vec<pb::Pod> {
    let manifest = root.join("echo.yaml");
    let text = MANIFEST
        .replace("replicas: 3", &format!("replicas: {replicas}"))
        .replace("image: busybox", &format!("image: {image}"));
    std::fs::write(&manifest, text).unwrap();
    run(cluster.cli().args(["apply", "-f"]).arg(&manifest))
        .expect("apply the echo deployment and service");
    eventually(
        &format!("{replicas} echo pods are ready behind the service"),
        T,
        || async { ready_endpoints(ch).await.len() == replicas },
    )
    .await;
    let pods = echo_pods(ch).await;
    let nodes_used: BTreeSet<&str> = pods.iter().map(|p| p.node_name()).collect();
    assert_eq!(nodes_used.len(), replicas, "one echo pod per node");
    for p in &pods {
        assert!(pod_ip(p).starts_with("10.244."), "pod IP {}", pod_ip(p));
    }
    pods
}

async fn fabric_test(fabric: &Fabric) {
    let root = tempfile::tempdir().unwrap();
    let cluster = fabric_cluster(fabric, root.path()).await;
    let ch = cluster.channel().await;
    let mut agents = node_agents(
        &cluster,
        root.path(),
        &fabric.members,
        Runtime::Process,
        None,
    );
    let node_names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();

    // Every node gets its own pod CIDR.
    eventually("three nodes have pod CIDRs", T, || async {
        let nodes = pb::Node::list(ch.clone(), Default::default())
            .await
            .unwrap()
            .0;
        let cidrs: BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref().map(|s| s.pod_cidr.clone()))
            .filter(|c| !c.is_empty())
            .collect();
        nodes.len() == 3 && cidrs.len() == 3
    })
    .await;

    let pods = apply_echo(&cluster, &ch, root.path(), 3, "busybox").await;

    // A pod reaches the pods of the other nodes by their IPs.
    let a = &pods[0];
    for b in &pods[1..] {
        assert_eq!(
            fetch_from(&pod_netns(a), &format!("{}:8080", pod_ip(b))).as_deref(),
            Ok(b.name()),
            "{} -> {} ({})",
            a.name(),
            b.name(),
            pod_ip(b)
        );
    }

    // A pod and a node reach the ClusterIP and get more than one endpoint.
    let svc = pb::Service::get(ch.clone(), get_req("default", "echo"))
        .await
        .unwrap();
    let cluster_ip = svc.spec.as_ref().unwrap().cluster_ip.clone();
    assert!(cluster_ip.starts_with("10.96."), "ClusterIP {cluster_ip}");
    let service = format!("{cluster_ip}:80");
    let from_pod = answers(&pod_netns(a), &service, 30);
    assert!(
        from_pod.len() >= 2,
        "from a pod, the service answered as {from_pod:?}"
    );
    let from_node = answers(&fabric.members[0].netns_path(), &service, 30);
    assert!(
        from_node.len() >= 2,
        "from a node, the service answered as {from_node:?}"
    );

    // The pod's resolver is its node's DNS server, which knows the service.
    let a_agent = agents.iter().find(|ag| ag.name == a.node_name()).unwrap();
    let pid = container_pid(&a_agent.data_dir, a).expect("the echo process of pod a");
    let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 10.244."),
        "the pod's resolv.conf: {resolv}"
    );
    assert!(
        resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );
    let lookup = run(Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-m"])
        .args(["busybox", "nslookup", "echo.default.svc.cluster.local"]))
    .expect("nslookup inside the pod");
    assert!(lookup.contains(&cluster_ip), "nslookup said: {lookup}");

    // A deleted pod leaves the service within seconds.
    let victim = pods[1].clone();
    pb::Pod::delete(ch.clone(), delete_req("default", victim.name()))
        .await
        .unwrap();
    eventually(
        "the deleted pod leaves the endpoints",
        Duration::from_secs(10),
        || async { !ready_endpoints(&ch).await.contains(pod_ip(&victim)) },
    )
    .await;
    eventually(
        "the deleted pod's namespace is gone",
        Duration::from_secs(10),
        || async { !pod_netns(&victim).exists() },
    )
    .await;

    plant_what_the_api_refuses(&cluster, fabric, root.path(), &node_names[0], &service).await;

    // A deleted node's route goes from every other node.
    let n3 = pb::Node::get(ch.clone(), get_req("", &node_names[2]))
        .await
        .unwrap();
    let cidr3 = n3.spec.as_ref().unwrap().pod_cidr.clone();
    for ns in [&node_names[0], &node_names[1]] {
        assert!(routes(ns).contains(&cidr3), "{ns} routes: {}", routes(ns));
    }
    agents[2].kill();
    pb::Node::delete(ch.clone(), delete_req("", &node_names[2]))
        .await
        .unwrap();
    eventually(
        "the deleted node's route is gone everywhere",
        Duration::from_secs(15),
        || async {
            [&node_names[0], &node_names[1]]
                .iter()
                .all(|ns| !routes(ns).contains(&cidr3))
        },
    )
    .await;
    drop(agents);
    drop(cluster);
}

/// Objects the API would never store, written around it (as a bug or a
/// damaged backup could leave them): a Service named with nft syntax, a
/// pod whose uid climbs out of the agent's directory, a Node whose pod
/// CIDR is outside the cluster's. The agents refuse each, and nothing
/// changes: no rule, no route, no directory, and the real service works.
async fn plant_what_the_api_refuses(
    cluster: &Cluster,
    fabric: &Fabric,
    root: &Path,
    node: &str,
    service: &str,
) {
    let evil_service = "x; flush ruleset";
    let mut svc = pb::Service::default();
    svc.meta_mut().namespace = "default".into();
    svc.meta_mut().name = evil_service.into();
    svc.spec = Some(pb::ServiceSpec {
        cluster_ip: "10.96.250.250".into(),
        ports: vec![pb::ServicePort {
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut pod = objects::pod("escape").build();
    pod.meta_mut().uid = "../../../../tmp/berth-escape".into();
    pod.spec.get_or_insert_default().node_name = node.into();
    let mut rogue = objects::node("rogue").build();
    rogue.spec.get_or_insert_default().pod_cidr = "192.0.2.0/24".into();
    rogue.status.get_or_insert_default().addresses = vec![pb::NodeAddress {
        r#type: "InternalIP".into(),
        address: fabric.members[1].ip.clone(),
    }];
    let ch = berth_client::connect::connect(&cluster.addrs(), &cluster.controller_transport())
        .await
        .unwrap()
        .1;
    let mut kv = berth_proto::kv::kv_client::KvClient::new(ch);
    let planted = [
        (
            format!("/registry/services/default/{evil_service}"),
            svc.encode_to_vec(),
        ),
        (
            "/registry/pods/default/escape".to_string(),
            pod.encode_to_vec(),
        ),
        ("/registry/nodes/rogue".to_string(), rogue.encode_to_vec()),
    ];
    for (key, value) in &planted {
        kv.put(berth_proto::kv::PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .expect("a raw write with --unsafe-raw-registry-writes");
    }
    let log =
        |name: &str| std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default();
    let refused = |name: &str, what: &str| {
        log(name).lines().any(|l| {
            l.contains("refusing an object the API would not have accepted") && l.contains(what)
        })
    };
    eventually("the agents refuse each planted object", T, || async {
        refused(node, "default/escape")
            && refused(node, evil_service)
            && refused(&fabric.members[0].netns, "rogue")
    })
    .await;
    for member in &fabric.members {
        let routes = routes(&member.netns);
        assert!(!routes.contains("192.0.2.0"), "{}: {routes}", member.netns);
    }
    let ruleset =
        run(Command::new("ip").args(["netns", "exec", node, "nft", "list", "ruleset"])).unwrap();
    assert!(!ruleset.contains("10.96.250.250"), "{ruleset}");
    assert!(!std::path::Path::new("/tmp/berth-escape").exists());
    let from_node = answers(&fabric.members[0].netns_path(), service, 10);
    assert!(!from_node.is_empty(), "the real service still answers");
    for (key, _) in planted {
        kv.delete(berth_proto::kv::DeleteRequest {
            key: key.into_bytes(),
            ..Default::default()
        })
        .await
        .expect("remove what was planted");
    }
}

const DOCKER_IMAGE: &str = "berth-test/busybox:3";
const PAUSE_IMAGE: &str = "berth-test/pause:1";

/// The docker runtime with `--network bridge`: each pod's pause container
/// holds its namespace, which the agent wires to the bridge; the pod's
/// containers join it and resolve through the node's DNS server. Skipped,
/// saying so, without a Docker Engine.
#[test]
fn docker_pods_get_a_network_of_their_own() {
    let docker_up = run(Command::new("docker").arg("info")).is_ok();
    let why = missing_prerequisite().or((!docker_up).then(|| "no Docker Engine answers".into()));
    if let Some(why) = why {
        eprintln!("SKIPPED docker_pods_get_a_network_of_their_own: {why}");
        return;
    }
    berth_testkit::images::busybox_image(DOCKER_IMAGE).expect("build the test image");
    berth_testkit::images::pause_image(PAUSE_IMAGE).expect("build the pause image");
    let fabric = node_fabric(2);
    fabric.block_on(|| docker_fabric_test(&fabric));
}

async fn docker_fabric_test(fabric: &Fabric) {
    let root = tempfile::tempdir().unwrap();
    let cluster = fabric_cluster(fabric, root.path()).await;
    let ch = cluster.channel().await;
    let agents = node_agents(
        &cluster,
        root.path(),
        &fabric.members,
        Runtime::Docker,
        Some(PAUSE_IMAGE),
    );
    let pods = apply_echo(&cluster, &ch, root.path(), 2, DOCKER_IMAGE).await;
    let (a, b) = (&pods[0], &pods[1]);
    assert_eq!(
        fetch_from(&pod_netns(a), &format!("{}:8080", pod_ip(b))).as_deref(),
        Ok(b.name()),
        "pod {} reaches pod {} on the other node",
        a.name(),
        b.name()
    );
    let svc = pb::Service::get(ch.clone(), get_req("default", "echo"))
        .await
        .unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip;
    let node1 = fabric.members[0].netns_path();
    let from_node = answers(&node1, &format!("{cluster_ip}:80"), 30);
    assert_eq!(
        from_node.len(),
        2,
        "from a node, the service answered as {from_node:?}"
    );

    let container = format!("berth-{}-{}-echo-0", a.node_name(), a.meta().unwrap().uid);
    let resolv = run(Command::new("docker").args(["exec", &container, "cat", "/etc/resolv.conf"]))
        .expect("read the container's resolv.conf");
    assert!(resolv.contains("nameserver 10.244."), "{resolv}");
    let lookup = run(Command::new("docker").args([
        "exec",
        &container,
        "nslookup",
        "echo.default.svc.cluster.local",
    ]))
    .expect("nslookup in the container");
    assert!(lookup.contains(&cluster_ip), "nslookup said: {lookup}");

    // Deleting the deployment removes the pods' pause containers and
    // namespaces.
    pb::Deployment::delete(ch.clone(), delete_req("default", "echo"))
        .await
        .unwrap();
    eventually("the pods' sandboxes are gone", T, || async {
        let left = run(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=berth.pod.uid={}", a.meta().unwrap().uid),
        ]))
        .unwrap_or_default();
        left.trim().is_empty() && !pod_netns(a).exists() && !pod_netns(b).exists()
    })
    .await;
    drop(agents);
    drop(cluster);
}

/// Services and nodes created concurrently, while the leader is killed,
/// never share a ClusterIP or pod CIDR; an address asked for twice is
/// refused the second time, and is free again once its holder is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn address_management_never_hands_out_an_address_twice() {
    let root = tempfile::tempdir().unwrap();
    let flags = ServerFlags {
        no_scheduler: true,
        ..Default::default()
    };
    let mut cluster = Cluster::ready(root.path(), flags).await;
    let creates = {
        let addrs = cluster.addrs();
        let transport = cluster.transport();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..60 {
                let addrs = addrs.clone();
                let transport = transport.clone();
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20 * i)).await;
                    let ch = berth::client::connect(&addrs, &transport).await.unwrap().1;
                    let svc = objects::service(&format!("s{i}")).build();
                    let node = objects::node(&format!("n{i}")).unreported().build();
                    // Outcomes may be unknown while the leader dies; what
                    // was stored is checked below.
                    let _ = pb::Service::create(ch.clone(), svc).await;
                    let _ = pb::Node::create(ch, node).await;
                }));
            }
            futures::future::join_all(tasks).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = cluster
        .wait_for_leader(&[1, 2, 3], Duration::from_secs(10))
        .await
        .unwrap();
    cluster.kill(leader);
    creates.await.unwrap();
    let ch = cluster.channel().await;

    let services = pb::Service::list(ch.clone(), Default::default())
        .await
        .unwrap()
        .0;
    let ips: Vec<String> = services
        .iter()
        .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone())
        .collect();
    assert!(
        services.len() >= 40,
        "only {} services were created",
        services.len()
    );
    assert!(ips.iter().all(|ip| ip.starts_with("10.96.")), "{ips:?}");
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        ips.len(),
        "a ClusterIP was handed out twice: {ips:?}"
    );
    let nodes = pb::Node::list(ch.clone(), Default::default())
        .await
        .unwrap()
        .0;
    let cidrs: Vec<String> = nodes
        .iter()
        .map(|n| n.spec.as_ref().unwrap().pod_cidr.clone())
        .collect();
    assert!(nodes.len() >= 40, "only {} nodes were created", nodes.len());
    assert!(
        cidrs
            .iter()
            .all(|c| c.starts_with("10.244.") && c.ends_with("/24")),
        "{cidrs:?}"
    );
    assert_eq!(
        cidrs.iter().collect::<BTreeSet<_>>().len(),
        cidrs.len(),
        "a pod CIDR was handed out twice: {cidrs:?}"
    );

    // Asking for a held address is refused; deleting its holder frees it.
    let taken = ips[0].clone();
    let again = objects::service("again").cluster_ip(&taken).build();
    let refused = pb::Service::create(ch.clone(), again.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains(&taken), "{}", refused.message());
    pb::Service::delete(ch.clone(), delete_req("default", services[0].name()))
        .await
        .unwrap();
    let created = pb::Service::create(ch.clone(), again).await.unwrap();
    assert_eq!(created.spec.unwrap().cluster_ip, taken);

    // An assigned address cannot be changed by an update.
    let mut moved = pb::Node::get(ch.clone(), get_req("", nodes[0].name()))
        .await
        .unwrap();
    // Another slice than its own, which the allocator may have picked.
    let spec = moved.spec.get_or_insert_default();
    spec.pod_cidr = match spec.pod_cidr.as_str() {
        "10.244.250.0/24" => "10.244.251.0/24".into(),
        _ => "10.244.250.0/24".into(),
    };
    let err = pb::Node::update(ch.clone(), moved).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}
