//! Cluster administration over gRPC: status, add-member, remove-member.
//! Membership changes run on the leader; other controllers forward them.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_proto::cluster as pb;
use berth_proto::cluster::cluster_client::ClusterClient;
use berth_proto::cluster::cluster_server;
use berth_raft::types::Raft;
use berth_raft::types::TypeConfig;
use berth_raft::Store;
use futures::stream::BoxStream;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ChangeMembershipError;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use openraft::metrics::RaftServerMetrics;
use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::Instant;
use openraft::RaftMetrics;
use openraft::ServerState;
use tonic::Request;
use tonic::Response;
use tonic::Status;

/// A member the leader has not heard from for this long is "unreachable".
const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);
/// How long a new member may take to catch up before it is promoted.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

pub struct ClusterService {
    store: Store,
}

impl ClusterService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> cluster_server::ClusterServer<Self> {
        cluster_server::ClusterServer::new(self)
    }

    fn raft(&self) -> &Raft {
        self.store.raft()
    }

    /// The leader's client when this controller is not the leader. Waits a
    /// little for an election in progress.
    async fn leader_client(
        &self,
    ) -> Result<Option<ClusterClient<tonic::transport::Channel>>, Status> {
        let mut rx = self.raft().metrics();
        let wait = async {
            loop {
                if rx.borrow_and_update().current_leader.is_some() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(self.store.config().write_timeout, wait).await;
        let m = self.raft().metrics().borrow_watched().clone();
        match m.current_leader {
            Some(l) if l == m.id && m.state == ServerState::Leader => Ok(None),
            Some(l) => {
                let node = m.membership_config.get_node(&l).ok_or_else(no_leader)?;
                let channel = self
                    .store
                    .channels()
                    .get(&node.addr)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                Ok(Some(ClusterClient::new(channel)))
            }
            None => Err(no_leader()),
        }
    }

    fn members(&self) -> Vec<pb::Member> {
        members(&self.raft().metrics().borrow_watched())
    }
}

fn no_leader() -> Status {
    Status::unavailable(
        "the cluster has no leader right now: fewer than a quorum of controllers are reachable; retry, and check `berth cluster status` on each controller",
    )
}

fn members(m: &RaftMetrics<TypeConfig>) -> Vec<pb::Member> {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let is_leader = m.state == ServerState::Leader;
    membership
        .nodes()
        .map(|(id, node)| {
            let voter = voters.contains(id);
            let matched_index = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            let heard_recently = m
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(id).cloned().flatten())
                .is_some_and(|t| t.elapsed() < UNREACHABLE_AFTER);
            let role = if Some(*id) == m.current_leader {
                "leader"
            } else if is_leader && *id != m.id && !heard_recently {
                "unreachable"
            } else if voter {
                "follower"
            } else {
                "learner"
            };
            pb::Member {
                id: *id,
                addr: node.addr.clone(),
                voter,
                role: role.to_string(),
                matched_index: if is_leader { matched_index } else { None },
            }
        })
        .collect()
}

fn leader_update(m: &RaftServerMetrics<TypeConfig>) -> pb::LeaderUpdate {
    let addr = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l))
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    pb::LeaderUpdate {
        leader: m.current_leader,
        addr,
        term: m.vote.leader_id().term,
    }
}

/// The leader now, then at every change, until the controller stops.
/// Server metrics change only with the vote, state or membership, so an
/// idle watcher costs nothing under write load.
fn leader_updates(raft: &Raft) -> BoxStream<'static, Result<pb::LeaderUpdate, Status>> {
    let rx = raft.server_metrics();
    let sent: Option<(Option<u64>, String)> = None;
    Box::pin(futures::stream::unfold(
        (rx, sent),
        |(mut rx, sent)| async move {
            loop {
                let update = leader_update(&rx.borrow_watched());
                let key = (update.leader, update.addr.clone());
                if sent.as_ref() != Some(&key) {
                    return Some((Ok(update), (rx, Some(key))));
                }
                rx.changed().await.ok()?;
            }
        },
    ))
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable("leadership moved during the change; retry")
        }
        // Two controllers joining at once: the second waits its turn
        // (joiners retry ABORTED).
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            c @ ChangeMembershipError::InProgress(_),
        )) => Status::aborted(format!(
            "another membership change is in progress ({c}); retry"
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(format!("membership change refused: {c}"))
        }
        other => Status::unavailable(format!("membership change did not complete: {other}")),
    }
}

fn parse_addr(addr: &str) -> Result<(), Status> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{addr:?} is not a HOST:PORT address"
        )))
    }
}

impl ClusterService {
    async fn add_as_leader(&self, req: pb::AddMemberRequest) -> Result<(), Status> {
        let m = self.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == req.id);
        if let Some(existing) = membership.get_node(&req.id) {
            if req.fresh {
                // Its old log and votes must stop counting before it returns.
                tracing::warn!(id = req.id, "re-adding a controller that lost its data");
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([req.id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([req.id]))
                };
                self.raft()
                    .change_membership(change, false)
                    .await
                    .map_err(write_error)?;
            } else if existing.addr != req.addr {
                return Err(Status::already_exists(format!(
                    "controller {} is already a member at {}; remove it first with `berth cluster remove-member {}`",
                    req.id, existing.addr, req.id
                )));
            } else if is_voter {
                return Ok(());
            }
        }
        let node = BasicNode {
            addr: req.addr.clone(),
        };
        let added = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            self.raft().add_learner(req.id, node, true),
        )
        .await;
        match added {
            Ok(r) => r.map_err(write_error)?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                "controller {} did not catch up within {CATCH_UP_TIMEOUT:?}; it stays a learner",
                req.id
            )))
            }
        };
        self.raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false)
            .await
            .map_err(write_error)?;
        tracing::info!(id = req.id, addr = %req.addr, "controller added as a voter");
        Ok(())
    }

    async fn remove_as_leader(&self, id: u64) -> Result<(), Status> {
        let m = self.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!(
                "controller {id} is not a member"
            )));
        }
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(
                    "cannot remove the last voter: the cluster would have no quorum",
                ));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft()
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        tracing::info!(id, "controller removed");
        Ok(())
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.raft().metrics().borrow_watched().clone();
        let initialized = m.membership_config.membership().nodes().next().is_some();
        Ok(Response::new(pb::StatusResponse {
            cluster_id: self.store.identity().cluster_id().unwrap_or_default(),
            id: m.id,
            leader: m.current_leader,
            term: m.current_term,
            commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            revision: self.store.revision(),
            members: members(&m),
            state: state_name(m.state).to_string(),
            initialized,
        }))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let req = req.into_inner();
        parse_addr(&req.addr)?;
        if let Some(mut leader) = self.leader_client().await? {
            let mut fwd = Request::new(req);
            fwd.set_timeout(CATCH_UP_TIMEOUT + Duration::from_secs(30));
            return leader.add_member(fwd).await;
        }
        self.add_as_leader(req).await?;
        Ok(Response::new(pb::AddMemberResponse {
            cluster_id: self.store.identity().cluster_id().unwrap_or_default(),
            members: self.members(),
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let req = req.into_inner();
        if let Some(mut leader) = self.leader_client().await? {
            return leader.remove_member(Request::new(req)).await;
        }
        self.remove_as_leader(req.id).await?;
        Ok(Response::new(pb::RemoveMemberResponse {
            members: self.members(),
        }))
    }

    type WatchLeaderStream = BoxStream<'static, Result<pb::LeaderUpdate, Status>>;

    async fn watch_leader(
        &self,
        _req: Request<pb::WatchLeaderRequest>,
    ) -> Result<Response<Self::WatchLeaderStream>, Status> {
        Ok(Response::new(leader_updates(self.raft())))
    }
}
