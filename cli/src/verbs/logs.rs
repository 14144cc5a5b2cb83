//! `berth logs POD [-c CONTAINER] [-f] [-p]`: a container's output, read
//! from the agent of the pod's node over its HTTP port (the node's
//! InternalIP and `status.daemonEndpoints.kubeletEndpoint.Port`).

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;
use anyhow::Result;
use berth::objects::ClientKind;
use berth_api::pb;
use clap::Args;
use std::sync::Arc;

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::status_error;
use super::Ctx;
use super::NamespaceArgs;

#[derive(Args)]
pub struct LogsArgs {
    pod: String,
    /// The container (needed when the pod has more than one).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep printing new output until the container stops.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The output of the container's previous run.
    #[arg(short = 'p', long)]
    previous: bool,
    #[command(flatten)]
    ns: NamespaceArgs,
}

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

pub async fn run(ctx: &Ctx, args: LogsArgs) -> Result<()> {
    let namespace = args.ns.get();
    let get = |name: &str, namespace: &str| pb::GetRequest {
        namespace: namespace.into(),
        name: name.into(),
        serializable: false,
    };
    let pod = pb::Pod::get(ctx.channel().await?, get(&args.pod, &namespace))
        .await
        .map_err(status_error)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let container = match (&args.container, names.as_slice()) {
        (Some(c), _) if names.contains(&c.as_str()) => c.clone(),
        (Some(c), _) => bail!(
            "pod {namespace}/{} has no container {c:?}: it has {}",
            args.pod,
            names.join(", ")
        ),
        (None, [one]) => one.to_string(),
        (None, _) => bail!(
            "pod {namespace}/{} has containers {}: choose one with -c",
            args.pod,
            names.join(", ")
        ),
    };
    if spec.node_name.is_empty() {
        bail!(
            "pod {namespace}/{} is not placed on a node yet, so it has no output",
            args.pod
        );
    }
    let node = pb::Node::get(ctx.channel().await?, get(&spec.node_name, ""))
        .await
        .map_err(status_error)?;
    let (ip, port) = agent_endpoint(&node).ok_or_else(|| {
        anyhow!(
            "node {} publishes no agent endpoint (is its agent running?)",
            spec.node_name
        )
    })?;
    let mut path = format!("/containerLogs/{namespace}/{}/{container}", args.pod);
    let flags: Vec<&str> = [
        args.follow.then_some("follow=true"),
        args.previous.then_some("previous=true"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !flags.is_empty() {
        path = format!("{path}?{}", flags.join("&"));
    }
    let stream = tokio::net::TcpStream::connect((ip.as_str(), port))
        .await
        .with_context(|| format!("reach the agent of node {} at {ip}:{port}", spec.node_name))?;
    let (mut sender, conn) = match &ctx.transport {
        berth_client::Transport::Insecure => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            (sender, tokio::spawn(conn))
        }
        berth_client::Transport::Tls(config) => {
            // The agent shows its node certificate, naming its address,
            // and takes ours; it speaks HTTP/1.1.
            let mut config = (**config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(ip.clone())
                .with_context(|| format!("{ip} is not a name TLS can verify"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, stream)
                .await
                .with_context(|| {
                    format!(
                        "TLS with the agent of node {} at {ip}:{port}",
                        spec.node_name
                    )
                })?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
            (sender, tokio::spawn(conn))
        }
    };
    let _connection = conn;
    let req = hyper::Request::get(path)
        .header("host", format!("{ip}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let ok = resp.status().is_success();
    let mut body = resp.into_body();
    if !ok {
        let text = body.collect().await?.to_bytes();
        bail!("{}", String::from_utf8_lossy(&text).trim());
    }
    let mut out = tokio::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            out.write_all(data).await?;
            out.flush().await?;
        }
    }
    Ok(())
}
