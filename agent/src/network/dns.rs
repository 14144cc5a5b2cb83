//! The node's DNS server for pods: `<service>.<namespace>.svc.<domain>`
//! answers with the service's ClusterIP; other names go to the node's
//! upstream resolvers (when there are any), so pods can use it as their
//! only resolver. It listens on the bridge address, which every pod of the
//! node reaches directly.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::op::MessageType;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::RData;
use hickory_proto::rr::Record;
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

/// Answers are short-lived: a service's address never changes, but a
/// deleted service's name should stop resolving soon.
const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Names to addresses, shared with whoever keeps them current.
#[derive(Clone, Default)]
pub struct Names(Arc<RwLock<HashMap<String, Ipv4Addr>>>);

impl Names {
    pub fn replace(&self, names: HashMap<String, Ipv4Addr>) {
        *self.0.write().expect("names lock") = names;
    }

    fn get(&self, name: &str) -> Option<Ipv4Addr> {
        self.0.read().expect("names lock").get(name).copied()
    }
}

/// The fully qualified name of a service, without the trailing dot.
pub fn service_name(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.svc.{domain}")
}

/// What a pod's `/etc/resolv.conf` says.
pub fn resolv_conf(server: Ipv4Addr, namespace: &str, domain: &str) -> String {
    format!(
        "nameserver {server}\nsearch {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n"
    )
}

pub struct DnsServer {
    pub names: Names,
    pub domain: String,
    pub upstream: Vec<SocketAddr>,
}

impl DnsServer {
    /// Serves queries on `socket` until the task is dropped.
    pub async fn serve(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(error = %e, "dns: receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let query = buf[..n].to_vec();
            let (this, socket) = (self.clone(), socket.clone());
            tokio::spawn(async move {
                if let Some(reply) = this.answer(&query).await {
                    let _ = socket.send_to(&reply, from).await;
                }
            });
        }
    }

    /// The reply to one query message, if it deserves one.
    pub async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let q = request.queries.first()?.clone();
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ours = name == self.domain || name.ends_with(&format!(".{}", self.domain));
        metrics::counter!("berth_agent_dns_queries_total", "zone" => if ours { "cluster" } else { "upstream" })
            .increment(1);
        if !ours {
            return self
                .forward(query)
                .await
                .or_else(|| reply_to(&request, ResponseCode::ServFail).to_vec().ok());
        }
        let mut reply = reply_to(&request, ResponseCode::NoError);
        reply.metadata.authoritative = true;
        match self.names.get(&name) {
            Some(ip) if matches!(q.query_type(), RecordType::A | RecordType::ANY) => {
                reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
            }
            // The name exists, only not with this type: an empty answer.
            Some(_) => {}
            None => reply.metadata.response_code = ResponseCode::NXDomain,
        }
        reply.to_vec().ok()
    }

    /// Relays the query to the first upstream that answers.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for server in &self.upstream {
            let bind: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0".parse().expect("an address")
            } else {
                "[::]:0".parse().expect("an address")
            };
            let Ok(socket) = UdpSocket::bind(bind).await else {
                continue;
            };
            if socket.send_to(query, server).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buf)).await
            {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }
}

fn reply_to(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    for q in &request.queries {
        reply.add_query(q.clone());
    }
    reply
}

/// Nameservers of the node's own resolver configuration.
pub fn host_upstream() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn server() -> DnsServer {
        let names = Names::default();
        names.replace(HashMap::from([(
            "echo.default.svc.cluster.local".to_string(),
            "10.96.0.10".parse().unwrap(),
        )]));
        DnsServer {
            names,
            domain: "cluster.local".into(),
            upstream: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_service_name_resolves_to_its_cluster_ip() {
        let s = server();
        let raw = s
            .answer(&query("Echo.default.svc.cluster.local.", RecordType::A))
            .await
            .unwrap();
        let reply = Message::from_vec(&raw).unwrap();
        assert_eq!(reply.metadata.id, 7);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(
            reply.answers[0].data,
            RData::A(A("10.96.0.10".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn unknown_names_are_nxdomain_and_other_zones_fail_without_upstream() {
        let s = server();
        let raw = s
            .answer(&query("nope.default.svc.cluster.local.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&raw).unwrap().metadata.response_code,
            ResponseCode::NXDomain
        );
        let raw = s
            .answer(&query("example.org.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&raw).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
        let raw = s
            .answer(&query("echo.default.svc.cluster.local.", RecordType::AAAA))
            .await
            .unwrap();
        let reply = Message::from_vec(&raw).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }

    #[tokio::test]
    async fn garbage_gets_no_answer() {
        assert!(server().answer(b"\x01\x02").await.is_none());
    }
}
