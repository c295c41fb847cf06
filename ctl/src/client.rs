//! Connection settings and the channel to the controller.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Uri};
use tresor_proto::MAX_MESSAGE_BYTES;
use tresor_proto::pb::admin_service_client::AdminServiceClient;

use crate::exit;

/// `tresorctl.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Controller URL.
    pub controller: Option<String>,
    /// The controller's CA certificate.
    pub ca_file: Option<PathBuf>,
    /// The access token.
    pub token_file: Option<PathBuf>,
}

/// Resolved settings.
pub struct Settings {
    /// Controller URL.
    pub controller: String,
    /// CA certificate PEM.
    pub ca_pem: String,
    /// Bearer token.
    pub token: String,
}

impl Settings {
    /// Flags win over the environment (clap), which wins over the config file.
    pub fn resolve(
        controller: Option<String>,
        ca_file: Option<PathBuf>,
        token_file: Option<PathBuf>,
        config: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let default_cfg = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/tresor/tresorctl.toml"));
        let file = match config.map(Path::to_path_buf).or(default_cfg.filter(|p| p.exists())) {
            Some(p) => {
                let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message().trim_end()))?
            }
            None => FileConfig::default(),
        };
        let controller = controller.or(file.controller).context(
            "no controller given: use --controller URL, TRESOR_CONTROLLER, or `controller` in tresorctl.toml",
        )?;
        let ca = ca_file.or(file.ca_file).context(
            "no CA certificate given: use --ca-file (the controller's state_dir/ca.pem), TRESOR_CA_FILE, or `ca_file` in tresorctl.toml",
        )?;
        let ca_pem =
            std::fs::read_to_string(&ca).with_context(|| format!("cannot read CA certificate {}", ca.display()))?;
        let token = match token_file.or(file.token_file) {
            Some(p) => std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read token file {}", p.display()))?
                .trim()
                .to_string(),
            None => String::new(),
        };
        Ok(Self { controller, ca_pem, token })
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            let _ = req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The admin client.
pub type Admin = AdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// The TLS channel to the controller.
pub async fn channel(s: &Settings) -> anyhow::Result<Channel> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let uri: Uri = s
        .controller
        .parse()
        .with_context(|| format!("{:?} is not a URL such as https://controller:7443", s.controller))?;
    if uri.scheme_str() != Some("https") {
        bail!("{}: the controller is reached over https://", s.controller);
    }
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&s.ca_pem)).domain_name(host);
    let ch = Channel::builder(uri)
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Unreachable(format!("cannot reach the controller at {}: {e}", s.controller)))?;
    Ok(ch)
}

/// Connect to the controller's AdminService.
pub async fn connect(s: &Settings) -> anyhow::Result<Admin> {
    let ch = channel(s).await?;
    let bearer = if s.token.is_empty() {
        None
    } else {
        Some(format!("Bearer {}", s.token).parse().context("the token contains characters not allowed in a header")?)
    };
    Ok(AdminServiceClient::with_interceptor(ch, Bearer(bearer))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The controller could not be reached.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A gRPC status as an error that keeps its code.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(StatusError(s))
}

/// Wrapper so the code survives into the exit code.
#[derive(Debug)]
pub struct StatusError(pub tonic::Status);

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.code() {
            tonic::Code::Unavailable => write!(f, "the controller is unavailable: {}", self.0.message()),
            _ => f.write_str(self.0.message()),
        }
    }
}

impl std::error::Error for StatusError {}

/// The exit code for an error.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Unreachable>().is_some() {
        return exit::UNREACHABLE;
    }
    match e.downcast_ref::<StatusError>().map(|s| s.0.code()) {
        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => exit::DENIED,
        Some(tonic::Code::NotFound) => exit::NOT_FOUND,
        Some(tonic::Code::InvalidArgument) => exit::USAGE,
        Some(tonic::Code::Unavailable) => exit::UNREACHABLE,
        _ => exit::FAILURE,
    }
}
