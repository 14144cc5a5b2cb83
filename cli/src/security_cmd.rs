//! `berth token create|list|revoke` and `berth user create`.

use std::time::Duration;
use std::time::SystemTime;

use anyhow::Context;
use berth_pki::Credentials;
use berth_pki::Issued;
use berth_proto::security as pb;
use berth_proto::security::tokens_client::TokensClient;
use berth_proto::security::users_client::UsersClient;
use clap::Subcommand;
use clap::ValueEnum;

use crate::verbs::status_error;
use crate::verbs::Ctx;

#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    Controller,
    Agent,
}

impl From<Role> for pb::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Controller => pb::Role::Controller,
            Role::Agent => pb::Role::Agent,
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a join token (printed once; the cluster keeps only its hash).
    Create {
        #[arg(long, value_enum)]
        role: Role,
        /// How long the token can be used.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// List the join tokens (ids, roles, expiry; never secrets).
    List,
    /// Revoke a join token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Print a credentials file for a new user NAME: the key is made here
    /// and never sent; the cluster signs its certificate.
    Create {
        name: String,
        /// A group the user is in (RBAC binds groups); repeatable.
        #[arg(long)]
        group: Vec<String>,
        #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}

pub async fn token(cmd: TokenCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let mut client = TokensClient::new(ctx.leader_channel().await?);
    match cmd {
        TokenCommand::Create { role, ttl } => {
            let made = client
                .create(pb::CreateTokenRequest {
                    role: pb::Role::from(role) as i32,
                    ttl_seconds: ttl.as_secs().max(1),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", made.token);
        }
        TokenCommand::List => {
            let list = client
                .list(pb::ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{:<8} {:<12} {:<22} EXPIRES", "ID", "ROLE", "CREATED");
            for t in list.tokens {
                let role = match pb::Role::try_from(t.role) {
                    Ok(pb::Role::Controller) => "controller",
                    Ok(pb::Role::Agent) => "agent",
                    _ => "?",
                };
                println!(
                    "{:<8} {:<12} {:<22} {}",
                    t.id,
                    role,
                    unix_time(t.created_unix),
                    unix_time(t.expires_unix)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .revoke(pb::RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(status_error)?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

pub async fn user(cmd: UserCommand, ctx: &Ctx) -> anyhow::Result<()> {
    let UserCommand::Create { name, group, ttl } = cmd;
    let (key_pem, csr_der) = berth_pki::key_request().context("make a key")?;
    let issued = UsersClient::new(ctx.leader_channel().await?)
        .issue(pb::IssueUserRequest {
            name: name.clone(),
            groups: group,
            ttl_seconds: ttl.as_secs().max(1),
            csr_der,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let servers = if issued.controllers.is_empty() {
        ctx.addrs.clone()
    } else {
        issued.controllers
    };
    let creds = Credentials::new(
        "berth",
        &servers,
        &issued.ca_pem,
        &name,
        &Issued {
            cert_pem: issued.cert_pem,
            key_pem,
        },
    );
    print!("{}", creds.to_yaml());
    Ok(())
}
