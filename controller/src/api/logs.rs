//! `Pods.Logs`: a container's output, read from the agent of the pod's node
//! as the Kubernetes API server proxies to the kubelet, so that a user
//! needs `get pods/log`, not the nodes (which `view` and `edit` cannot
//! read) nor a way to the node's address.

use berth_api::pb;
use berth_api::Object;
use berth_api::Reason;
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::BodyExt;
use http_body_util::BodyStream;
use tonic::Status;

use super::objects::Api;

/// Where a node's agent serves logs: its InternalIP and the port it
/// publishes as `status.daemonEndpoints.kubeletEndpoint.Port`.
fn agent_endpoint(node: &pb::Node) -> Option<(String, u16)> {
    let status = node.status.as_ref()?;
    let port = status
        .daemon_endpoints
        .as_ref()?
        .kubelet_endpoint
        .as_ref()?
        .port;
    let ip = status
        .addresses
        .iter()
        .find(|a| a.r#type == "InternalIP")?
        .address
        .clone();
    Some((ip, u16::try_from(port).ok().filter(|p| *p != 0)?))
}

/// The container a logs request is about: the one named (an init
/// container too), or the pod's only one.
fn container_of(pod: &pb::Pod, asked: &str) -> Result<String, Status> {
    let what = format!("pod {}/{}", pod.namespace(), pod.name());
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    let names: Vec<&str> = containers.map(|c| c.name.as_str()).collect();
    let init_names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| &s.init_containers)
        .map(|c| c.name.as_str())
        .collect();
    match (asked, names.as_slice()) {
        (c, _) if names.contains(&c) || init_names.contains(&c) => Ok(c.to_string()),
        ("", [one]) => Ok(one.to_string()),
        ("", _) => Err(Reason::Invalid.status(format!(
            "{what} has containers {}: choose one with -c",
            names.join(", ")
        ))),
        (c, _) => Err(Reason::Invalid.status(format!(
            "{what} has no container {c:?}: it has {}",
            names
                .iter()
                .chain(&init_names)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The kubelet's query parameters for a logs request; what no kubelet
/// would take is refused here.
fn query(req: &pb::LogsRequest) -> Result<Vec<String>, Status> {
    let mut flags = Vec::new();
    if req.follow {
        flags.push("follow=true".to_string());
    }
    if req.previous {
        flags.push("previous=true".to_string());
    }
    if req.timestamps {
        flags.push("timestamps=true".to_string());
    }
    match req.tail_lines {
        Some(n) if n < 0 => {
            return Err(Reason::Invalid.status(format!(
                "tailLines {n} must not be negative: leave it unset for every line"
            )))
        }
        Some(n) => flags.push(format!("tailLines={n}")),
        None => {}
    }
    match (req.since_seconds, req.since_time.as_str()) {
        (Some(_), t) if !t.is_empty() => {
            return Err(Reason::Invalid
                .status("at most one of sinceSeconds and sinceTime may be set".to_string()))
        }
        (Some(s), _) if s <= 0 => {
            return Err(Reason::Invalid.status(format!("sinceSeconds {s} must be greater than 0")))
        }
        (Some(s), _) => flags.push(format!("sinceSeconds={s}")),
        (None, "") => {}
        (None, t) => {
            humantime::parse_rfc3339_weak(t).map_err(|e| {
                Reason::Invalid.status(format!(
                    "sinceTime {t:?} is not an RFC 3339 time ({e}): write it as 2024-05-01T12:00:00Z"
                ))
            })?;
            flags.push(format!("sinceTime={}", t.replace('+', "%2B")));
        }
    }
    Ok(flags)
}

impl Api<pb::Pod> {
    pub async fn logs(
        &self,
        req: pb::LogsRequest,
    ) -> Result<BoxStream<'static, Result<pb::LogChunk, Status>>, Status> {
        let namespace = self.namespace_of(&req.namespace);
        let get = |namespace: &str, name: &str| pb::GetRequest {
            namespace: namespace.into(),
            name: name.into(),
            serializable: false,
        };
        let pod = self.get(get(&namespace, &req.name)).await?;
        let container = container_of(&pod, &req.container)?;
        let node_name = pod.node_name().to_string();
        if node_name.is_empty() {
            return Err(Status::failed_precondition(format!(
                "pod {namespace}/{} is not placed on a node yet, so it has no output",
                req.name
            )));
        }
        let node = Api::<pb::Node>::new(self.store.clone())
            .get(get("", &node_name))
            .await?;
        let (ip, port) = agent_endpoint(&node).ok_or_else(|| {
            Status::unavailable(format!(
                "node {node_name} publishes no agent endpoint (is its agent running?)"
            ))
        })?;
        let flags = query(&req)?;
        let path = format!(
            "/containerLogs/{namespace}/{}/{container}?{}",
            req.name,
            flags.join("&")
        );
        let transport = self
            .agents
            .as_ref()
            .ok_or_else(|| Status::internal("this API does not reach agents"))?;
        let agent = berth_pki::Identity::Node(node_name.clone());
        let resp = berth_tls::http1::get(transport, &ip, port, &path, Some(&agent))
            .await
            .map_err(|e| {
                Status::unavailable(format!("cannot reach the agent of node {node_name}: {e}"))
            })?;
        let code = resp.status();
        if !code.is_success() {
            let text = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(match code.as_u16() {
                404 => Status::not_found(text),
                403 => Status::permission_denied(text),
                _ => Status::unavailable(format!("the agent of node {node_name}: {text}")),
            });
        }
        Ok(BodyStream::new(resp.into_body())
            .filter_map(|frame| async move {
                match frame {
                    Ok(frame) => frame.into_data().ok().map(|data| {
                        Ok(pb::LogChunk {
                            data: data.to_vec(),
                        })
                    }),
                    Err(e) => Some(Err(Status::unavailable(format!(
                        "the agent stopped sending: {e}"
                    )))),
                }
            })
            .boxed())
    }
}
