//! The local installation as the CLI sees it: the config file, the env file
//! beside it, the client key, and the gateway address they lead to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use apx_gateway::Config;

use crate::envfile::{self, EnvVars};
use crate::exit::{self, Failure};
use crate::paths::{self, Files};

pub struct Local {
    pub files: Files,
    /// The config text, `None` when there is no config file yet.
    pub text: Option<String>,
    /// The env file's variables; empty when it is missing or unreadable
    /// (see [`Local::env_strict`]).
    pub env: EnvVars,
    env_error: Option<String>,
}

impl Local {
    pub fn discover(config: &Path) -> anyhow::Result<Local> {
        let files = Files::of(config);
        let text = paths::read_optional(&files.config)?;
        let (env, env_error) = match envfile::read(&files.env) {
            Ok(env) => (env, None),
            Err(err) => (EnvVars::new(), Some(format!("{err:#}"))),
        };
        Ok(Local {
            files,
            text,
            env,
            env_error,
        })
    }

    pub fn config_path(&self) -> &Path {
        &self.files.config
    }

    /// The env file's variables, or the error reading it.
    pub fn env_strict(&self) -> anyhow::Result<&EnvVars> {
        match &self.env_error {
            None => Ok(&self.env),
            Some(err) => Err(anyhow::anyhow!("{err}")),
        }
    }

    /// A variable as the gateway will see it: the env file first, then the
    /// environment.
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }

    fn text_or_missing(&self) -> anyhow::Result<&str> {
        self.text.as_deref().ok_or_else(|| {
            Failure::new(
                exit::FAILURE,
                format!("there is no config at {}", self.files.config.display()),
            )
            .hint("create one with `apx init`, or point --config / APX_CONFIG at yours")
            .into()
        })
    }

    /// The config exactly as the gateway will load it: every `${NAME}` must
    /// be set, in the env file or the environment.
    pub fn config(&self) -> anyhow::Result<Config> {
        let text = self.text_or_missing()?;
        self.env_strict()?;
        Ok(apx_gateway::config::parse(
            &self.files.config,
            text,
            &|name| self.lookup(name),
        )?)
    }

    /// The config for commands that do not need upstream credentials (`apx
    /// call`, `apx keys`, …): unset `${NAME}` references are not an error.
    pub fn config_lenient(&self) -> anyhow::Result<Config> {
        let text = self.text_or_missing()?;
        Ok(apx_gateway::config::parse(
            &self.files.config,
            text,
            &|name| self.lookup(name).or_else(|| Some("unset".to_string())),
        )?)
    }

    /// The state directory, found without validating the whole config.
    pub fn state_dir(&self) -> PathBuf {
        paths::state_dir_of(&self.files.config, self.text.as_deref())
    }

    /// The gateway key the CLI uses: `$APX_API_KEY`, else `client.key`.
    pub fn client_key(&self) -> anyhow::Result<Option<String>> {
        if let Some(key) = std::env::var("APX_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
        {
            return Ok(Some(key.trim().to_string()));
        }
        let text = paths::read_optional(&self.files.client_key).with_context(|| {
            "the CLI's gateway key is not readable; set APX_API_KEY instead".to_string()
        })?;
        Ok(text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
    }
}

/// Where to connect to reach a gateway listening on `listen`: a wildcard
/// address is reached through loopback.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// The base URL of a gateway: `$APX_URL` when set, else from the config's
/// `listen` address. Only plain `http://` is supported.
pub fn gateway_addr(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    match std::env::var("APX_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) => parse_http_url(&url),
        None => Ok(connect_addr(listen)),
    }
}

pub fn parse_http_url(url: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let rest = url.trim().strip_prefix("http://").ok_or_else(|| {
        Failure::new(
            exit::USAGE,
            format!("`{url}` is not an http:// URL (the CLI talks plain HTTP to a local gateway)"),
        )
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            Failure::new(exit::USAGE, format!("cannot resolve the host in `{url}`")).into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_is_reached_on_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:8080".parse().unwrap()).to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            connect_addr("[::]:9".parse().unwrap()).to_string(),
            "[::1]:9"
        );
        assert_eq!(
            connect_addr("10.1.2.3:80".parse().unwrap()).to_string(),
            "10.1.2.3:80"
        );
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:9000/")
                .unwrap()
                .to_string(),
            "127.0.0.1:9000"
        );
        assert_eq!(parse_http_url("http://127.0.0.1").unwrap().port(), 80);
        assert!(parse_http_url("https://x").is_err());
    }
}
