//! TLS material: the node's server identity (configured, or self-signed on
//! first start), the cluster CA and node certificates (`vektagraf certs`),
//! and quinn configs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::proto::Error;

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidConfig {
        key: "tls".into(),
        reason: e.to_string(),
    }
}

/// The crypto provider (ring) used everywhere; never the process default.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// SHA-256 fingerprint of a certificate, as colon-separated hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

/// Loads an identity from PEM files.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, Error> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(format!("{}: {e}", key.display())))?;
    Ok(Identity { chain, key })
}

/// The node's server identity: the configured files, or a self-signed
/// certificate created in `dir` on first start (SANs: localhost,
/// 127.0.0.1, ::1 and `extra_names`). Returns the identity and whether it
/// was just created.
pub fn server_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: &Path,
    extra_names: &[String],
) -> Result<(Identity, bool), Error> {
    if let (Some(c), Some(k)) = (cert, key) {
        return Ok((load_identity(c, k)?, false));
    }
    let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
    if c.exists() && k.exists() {
        return Ok((load_identity(&c, &k)?, false));
    }
    std::fs::create_dir_all(dir).map_err(tls_err)?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(extra_names.iter().cloned());
    let key_pair = KeyPair::generate().map_err(tls_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    params.subject_alt_names = sans(&names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "vektagraf node (self-signed)");
    let cert = params.self_signed(&key_pair).map_err(tls_err)?;
    std::fs::write(&c, cert.pem()).map_err(tls_err)?;
    crate::util::write_private(&k, key_pair.serialize_pem().as_bytes())?;
    Ok((load_identity(&c, &k)?, true))
}

fn sans(names: &[String]) -> Result<Vec<SanType>, Error> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into().map_err(tls_err)?)),
        })
        .collect()
}

/// Files written by [`make_certs`].
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The cluster CA certificate (clients and nodes trust it).
    pub ca_cert: PathBuf,
    /// Node certificate and key paths, by node id.
    pub nodes: Vec<(u64, PathBuf, PathBuf)>,
}

/// `vektagraf certs`: a cluster CA and one certificate per node (SANs:
/// `node-<id>`, localhost, 127.0.0.1 and `hosts`), usable for both server
/// and client auth. The CA certificate is the clients' trust material.
pub fn make_certs(out: &Path, node_ids: &[u64], hosts: &[String]) -> Result<CertFiles, Error> {
    std::fs::create_dir_all(out).map_err(tls_err)?;
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vektagraf cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let ca_cert_path = out.join("ca.crt");
    std::fs::write(&ca_cert_path, ca_cert.pem()).map_err(tls_err)?;
    crate::util::write_private(&out.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut nodes = Vec::new();
    for id in node_ids {
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut names = vec![format!("node-{id}"), "localhost".into(), "127.0.0.1".into()];
        names.extend(hosts.iter().cloned());
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        p.subject_alt_names = sans(&names)?;
        p.distinguished_name
            .push(DnType::CommonName, format!("node-{id}"));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer).map_err(tls_err)?;
        let (c, k) = (
            out.join(format!("node-{id}.crt")),
            out.join(format!("node-{id}.key")),
        );
        std::fs::write(&c, cert.pem() + &ca_cert.pem()).map_err(tls_err)?;
        crate::util::write_private(&k, key.serialize_pem().as_bytes())?;
        nodes.push((*id, c, k));
    }
    Ok(CertFiles {
        ca_cert: ca_cert_path,
        nodes,
    })
}

/// Transport settings shared by server and client.
pub fn transport(
    idle: Duration,
    keep_alive: Option<Duration>,
    max_streams: u32,
) -> Result<TransportConfig, Error> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_idle_timeout(Some(idle.try_into().map_err(tls_err)?));
    t.keep_alive_interval(keep_alive);
    Ok(t)
}

/// The client-facing server config: server TLS 1.3, ALPN `vektagraf/1`.
pub fn server_config(
    id: &Identity,
    alpn: &[u8],
    transport_cfg: TransportConfig,
) -> Result<quinn::ServerConfig, Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(tls).map_err(tls_err)?,
    ));
    cfg.transport_config(Arc::new(transport_cfg));
    Ok(cfg)
}

/// A client config trusting exactly `trust` (the node's self-signed
/// certificate, or the cluster CA).
pub fn client_config(
    trust: &[CertificateDer<'static>],
    alpn: &[u8],
    transport_cfg: TransportConfig,
) -> Result<quinn::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trust {
        roots.add(c.clone()).map_err(tls_err)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut cfg =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).map_err(tls_err)?));
    cfg.transport_config(Arc::new(transport_cfg));
    Ok(cfg)
}
