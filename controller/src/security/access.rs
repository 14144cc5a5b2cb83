//! `Access.Review`: what `berth auth can-i` asks, answered by the same
//! authorizer that decides calls.

use berth_proto::security as pb;
use berth_proto::security::access_server;
use berth_rbac::Attributes;
use berth_rbac::Decision;
use berth_rbac::User;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::authorizer::denial;
use super::authorizer::forbidden;
use super::authorizer::Authorizer;
use super::authorizer::Caller;

pub struct AccessService {
    authz: Authorizer,
}

impl AccessService {
    pub fn server(authz: Authorizer) -> access_server::AccessServer<Self> {
        access_server::AccessServer::new(Self { authz })
    }

    /// The user a review is about: the caller, or the one it names if the
    /// caller may impersonate that user and each of its groups.
    async fn subject(&self, caller: &Caller, r: &pb::AccessReview) -> Result<Option<User>, Status> {
        if r.user.is_empty() {
            if !r.groups.is_empty() {
                return Err(Status::invalid_argument(
                    "groups without a user: name the user to ask about (--as), then its groups (--as-group)",
                ));
            }
            return Ok(caller.rbac_user());
        }
        if let Some(asker) = caller.rbac_user() {
            self.may_ask_for_others(&asker, r).await?;
        }
        Ok(Some(User {
            name: r.user.clone(),
            groups: r.groups.clone(),
        }))
    }
}

impl AccessService {
    /// Kubernetes' two ways to ask about another user: create a
    /// SubjectAccessReview (what nodes' log servers do), or impersonate
    /// the user and each of its groups (`kubectl auth can-i --as`).
    async fn may_ask_for_others(&self, asker: &User, r: &pb::AccessReview) -> Result<(), Status> {
        let review = Attributes {
            verb: "create".into(),
            api_group: "authorization.k8s.io".into(),
            resource: "subjectaccessreviews".into(),
            ..Default::default()
        };
        if self.authz.decide(asker, &review).await? != Decision::Denied {
            return Ok(());
        }
        let impersonate = |resource: &str, name: &str| Attributes {
            verb: "impersonate".into(),
            resource: resource.into(),
            name: name.into(),
            ..Default::default()
        };
        let mut needed = vec![impersonate("users", &r.user)];
        needed.extend(r.groups.iter().map(|g| impersonate("groups", g)));
        for attrs in needed {
            if self.authz.decide(asker, &attrs).await? == Decision::Denied {
                return Err(forbidden(&asker.name, &attrs));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl access_server::Access for AccessService {
    async fn review(
        &self,
        req: Request<pb::AccessReview>,
    ) -> Result<Response<pb::AccessReviewResult>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        if r.verb.is_empty() || r.resource.is_empty() {
            return Err(Status::invalid_argument(
                "a review needs a verb and a resource (e.g. list pods, or * * for everything)",
            ));
        }
        let attrs = Attributes {
            verb: r.verb.clone(),
            api_group: r.api_group.clone(),
            resource: r.resource.clone(),
            subresource: r.subresource.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        };
        let result = match self.subject(&caller, &r).await? {
            None => pb::AccessReviewResult {
                allowed: true,
                reason: match caller {
                    Caller::Anyone => "the server is insecure: nothing is checked".into(),
                    _ => "controllers may do anything".into(),
                },
            },
            Some(user) => match self.authz.decide(&user, &attrs).await? {
                Decision::Allowed(reason) => pb::AccessReviewResult {
                    allowed: true,
                    reason,
                },
                Decision::Denied => pb::AccessReviewResult {
                    allowed: false,
                    reason: denial(&user.name, &attrs),
                },
            },
        };
        Ok(Response::new(result))
    }
}
