//! Node-to-node TLS: the cluster CA, node certificates, and the rustls configurations that
//! carry internal RPC and Raft over mutual TLS.
//!
//! The CA is made with rcgen by the primary node (at `cluster create`, or once an upgraded
//! cluster is finalized at 0.2.0) and kept in the replicated state. A node makes its own key and
//! sends only a certificate signing request (at join, or later over the authenticated RPC); the
//! CA signs it for the node's address. The node keeps its key, certificate and the CA in
//! `DATA_DIR/tls/` (directory 0700, files 0600) and serves them through a [`CertSlot`] whose
//! content is swapped in place, so a rotation needs no restart.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_model::ClusterCa;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// The directory under the data dir that holds the node's TLS files.
pub const TLS_DIR: &str = "tls";
/// The cluster CA's certificate (what clients pass as `--cacert`).
pub const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";
/// How long a new node certificate is valid, in years.
const NODE_CERT_YEARS: i32 = 5;
/// How long the cluster CA is valid, in years.
const CA_YEARS: i32 = 20;

/// Why a certificate could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not make or sign a certificate or request.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused a key, certificate or configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// PEM text that holds no usable certificate or key.
    #[error("PEM: {0}")]
    Pem(String),
    /// Reading or writing the node's TLS files.
    #[error("TLS files: {0}")]
    Io(#[from] std::io::Error),
}

/// Makes the ring provider the process's rustls default; the internal HTTP clients (reqwest
/// built without a provider of its own) need one. Calling it again does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Validity from the start of this year to `years` later (rcgen takes calendar dates).
fn validity(params: &mut CertificateParams, years: i32) {
    let year = 1970 + (flotilla_model::now_secs() / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn random_serial() -> SerialNumber {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Makes a new cluster CA (ECDSA P-256), named after the cluster.
pub fn make_ca(cluster_name: &str) -> Result<ClusterCa, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Flotilla");
    name.push(
        DnType::CommonName,
        format!("Flotilla cluster CA {cluster_name}"),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    validity(&mut params, CA_YEARS);
    let certificate = params.self_signed(&key)?;
    Ok(ClusterCa {
        certificate: certificate.pem(),
        key: key.serialize_pem(),
        rotation: 0,
    })
}

fn first_certificate(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("no certificate ({e})")))
}

/// The SHA-256 fingerprint of a certificate's DER, as `AB:CD:...`: what an operator compares
/// (`flotilla status` prints the CA's; `cluster join --cluster-ca-fingerprint` checks it).
pub fn fingerprint(certificate_pem: &str) -> Result<String, TlsError> {
    let der = first_certificate(certificate_pem)?;
    let digest = Sha256::digest(der.as_ref());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// True when `given` names the same fingerprint as `actual` (case and separators aside).
pub fn same_fingerprint(given: &str, actual: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_uppercase())
            .collect::<String>()
    };
    let given = norm(
        given
            .trim_start_matches("SHA256:")
            .trim_start_matches("sha256:"),
    );
    given.len() == 64 && given == norm(actual)
}

/// The serial number of a certificate, in hex: what tells one issue from the next.
pub fn serial_of(certificate_pem: &str) -> Result<String, TlsError> {
    let der = first_certificate(certificate_pem)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Pem(format!("unreadable certificate ({e})")))?;
    Ok(parsed.raw_serial_as_string())
}

/// A key made on this node and the signing request for it.
pub struct KeyRequest {
    /// The new private key (PEM); it stays on the node.
    pub key: String,
    /// The certificate signing request (PEM) the CA signs.
    pub csr: String,
}

/// Makes a key for a node at `addr` and its signing request.
pub fn key_request(addr: IpAddr) -> Result<KeyRequest, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, addr.to_string());
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::IpAddress(addr)];
    let csr = params.serialize_request(&key)?;
    Ok(KeyRequest {
        key: key.serialize_pem(),
        csr: csr.pem()?,
    })
}

/// Signs a node's request with the cluster CA. The certificate names the node's address as the
/// state knows it (whatever the request asked for) and serves as both server and client.
pub fn sign(ca: &ClusterCa, csr: &str, addr: IpAddr) -> Result<String, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = CertificateParams::from_ca_cert_pem(&ca.certificate)?.self_signed(&ca_key)?;
    let mut request = CertificateSigningRequestParams::from_pem(csr)?;
    let params = &mut request.params;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, addr.to_string());
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::IpAddress(addr)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    validity(params, NODE_CERT_YEARS);
    Ok(request.signed_by(&issuer, &ca_key)?.pem())
}

/// A self-signed certificate for `addr` and its key (PEM), for a node that is in no cluster
/// yet and so has no certificate from a CA.
pub fn self_signed(addr: IpAddr) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("Flotilla node {addr} (not in a cluster)"),
    );
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::IpAddress(addr)];
    params.serial_number = Some(random_serial());
    validity(&mut params, NODE_CERT_YEARS);
    Ok((params.self_signed(&key)?.pem(), key.serialize_pem()))
}

/// The node's TLS files: the CA it trusts, its certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCredentials {
    /// The cluster CA's certificate (PEM).
    pub ca: String,
    /// The node's certificate (PEM).
    pub certificate: String,
    /// The node's private key (PEM).
    pub key: String,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl NodeCredentials {
    /// Reads the files from `DATA_DIR/tls`; `None` when the node has no certificate yet.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, TlsError> {
        let dir = data_dir.join(TLS_DIR);
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        match (read(CA_FILE), read(CERT_FILE), read(KEY_FILE)) {
            (Ok(ca), Ok(certificate), Ok(key)) => Ok(Some(Self {
                ca,
                certificate,
                key,
            })),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e))
                if e.kind() != std::io::ErrorKind::NotFound =>
            {
                Err(e.into())
            }
            _ => Ok(None),
        }
    }

    /// Writes the files (directory 0700, files 0600; each written whole, then renamed).
    pub fn save(&self, data_dir: &Path) -> Result<(), TlsError> {
        let dir = tls_dir(data_dir)?;
        write_private(&dir, KEY_FILE, &self.key)?;
        write_private(&dir, CERT_FILE, &self.certificate)?;
        write_private(&dir, CA_FILE, &self.ca)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }
}

/// `DATA_DIR/tls`, made 0700 if missing.
fn tls_dir(data_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = data_dir.join(TLS_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Writes `text` to `dir/name`, readable by the daemon's user only.
fn write_private(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    crate::identity::write_private(dir, name, text.as_bytes())
}

fn certified_key(certificate: &str, key: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = vec![first_certificate(certificate)?];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| TlsError::Pem(format!("no private key ({e})")))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())?;
    Ok(Arc::new(certified))
}

fn roots(ca: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(first_certificate(ca)?)?;
    Ok(Arc::new(roots))
}

/// The certificate a node presents, swapped in place when it gets a new one: both its TLS
/// server and its TLS client read it at every handshake.
#[derive(Clone, Default, Debug)]
pub struct CertSlot(Arc<RwLock<Option<Arc<CertifiedKey>>>>);

impl CertSlot {
    /// Puts `key` in use for the next handshakes.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().expect("certificate slot") = Some(key);
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().expect("certificate slot").clone()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// A TLS server configuration that presents `slot` and asks for (but does not require) a
/// client certificate from `ca`; routes decide what needs one.
pub fn server_config(ca: &str, slot: &CertSlot) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Pem(format!("client verifier: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(slot.clone()));
    Ok(Arc::new(config))
}

/// The certificate REST presents over HTTPS: the node's certificate from the cluster CA once
/// it has one (a rotation shows at the next handshake), else a self-signed one.
#[derive(Debug)]
struct RestCertificate {
    node: CertSlot,
    self_signed: Arc<CertifiedKey>,
}

impl ResolvesServerCert for RestCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.node.get().or_else(|| Some(self.self_signed.clone()))
    }
}

/// The self-signed certificate files of a node that has no certificate from a cluster CA yet.
const SELF_SIGNED_CERT: &str = "self-signed.crt";
const SELF_SIGNED_KEY: &str = "self-signed.key";

/// The TLS configuration of the REST API on HTTPS (no client certificates: operators log in
/// with their credentials). Made at first start, the self-signed certificate is kept in
/// `DATA_DIR/tls` and used until the node has one from the cluster CA.
pub fn rest_server_config(tls: &NodeTls) -> Result<Arc<ServerConfig>, TlsError> {
    let dir = tls_dir(&tls.inner.data_dir)?;
    let (cert_path, key_path) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
    let (certificate, key) = match (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        (Ok(certificate), Ok(key)) => (certificate, key),
        _ => {
            let (certificate, key) = self_signed(tls.inner.addr)?;
            write_private(&dir, SELF_SIGNED_KEY, &key)?;
            write_private(&dir, SELF_SIGNED_CERT, &certificate)?;
            (certificate, key)
        }
    };
    let resolver = RestCertificate {
        node: tls.inner.slot.clone(),
        self_signed: certified_key(&certificate, &key)?,
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// The REST API's HTTPS port: TLS only.
pub struct HttpsOnly(pub Arc<ServerConfig>);

impl crate::listener::ListenPolicy for HttpsOnly {
    fn tls(&self) -> Option<Arc<ServerConfig>> {
        Some(self.0.clone())
    }

    fn plaintext_allowed(&self) -> bool {
        false
    }
}

/// A TLS client configuration that trusts only `ca` (checking the server's address against
/// its certificate) and presents `slot`'s certificate when it has one.
pub fn client_config(ca: &str, slot: &CertSlot) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_client_cert_resolver(Arc::new(slot.clone())))
}

/// The HTTP client of node-to-node calls over TLS, sourced from the node's address.
pub fn https_client(local_addr: IpAddr, config: ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .local_address(local_addr)
        .no_proxy()
        .connect_timeout(Duration::from_millis(500))
        .tls_info(true)
        .build()
        .expect("building an HTTP client with static settings cannot fail")
}

/// A server verifier that accepts any certificate: only for fetching the CA of a cluster
/// before joining it, whose fingerprint is then checked (or trusted on first use and logged);
/// the join itself runs over a connection verified against that CA.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration that accepts any server certificate (see [`AnyServer`]).
pub(crate) fn unverified_client_config() -> Result<ClientConfig, TlsError> {
    let provider = provider();
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth())
}

/// What a node uses for node-to-node TLS once it has a certificate from the cluster CA.
struct Active {
    credentials: NodeCredentials,
    server: Arc<ServerConfig>,
    client: reqwest::Client,
}

/// The node's side of node-to-node TLS: its credentials, the server configuration its RPC
/// listener uses, and the HTTPS client its calls use. Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    inner: Arc<NodeTlsInner>,
}

struct NodeTlsInner {
    data_dir: PathBuf,
    addr: IpAddr,
    slot: CertSlot,
    active: RwLock<Option<Active>>,
}

impl NodeTls {
    /// The node's TLS as its files in `data_dir` leave it (none before its first certificate).
    pub fn open(data_dir: &Path, addr: IpAddr) -> Result<Self, TlsError> {
        install_crypto_provider();
        let tls = NodeTls {
            inner: Arc::new(NodeTlsInner {
                data_dir: data_dir.to_path_buf(),
                addr,
                slot: CertSlot::default(),
                active: RwLock::new(None),
            }),
        };
        if let Some(credentials) = NodeCredentials::load(data_dir)? {
            tls.activate(credentials)?;
        }
        Ok(tls)
    }

    /// Saves new credentials and takes them into use at once: the next handshakes of the
    /// server and the client present the new certificate.
    pub fn install(&self, credentials: NodeCredentials) -> Result<(), TlsError> {
        credentials.save(&self.inner.data_dir)?;
        self.activate(credentials)
    }

    fn activate(&self, credentials: NodeCredentials) -> Result<(), TlsError> {
        let key = certified_key(&credentials.certificate, &credentials.key)?;
        let mut active = self.inner.active.write().expect("node TLS");
        let same_ca = active
            .as_ref()
            .is_some_and(|a| a.credentials.ca == credentials.ca);
        self.inner.slot.set(key);
        match active.as_mut() {
            Some(current) if same_ca => current.credentials = credentials,
            _ => {
                let server = server_config(&credentials.ca, &self.inner.slot)?;
                let config = client_config(&credentials.ca, &self.inner.slot)?;
                let client = https_client(self.inner.addr, config);
                *active = Some(Active {
                    credentials,
                    server,
                    client,
                });
            }
        }
        Ok(())
    }

    /// The node's credentials, once it has a certificate.
    pub fn credentials(&self) -> Option<NodeCredentials> {
        let active = self.inner.active.read().expect("node TLS");
        active.as_ref().map(|a| a.credentials.clone())
    }

    /// True once the node has a certificate from the cluster CA.
    pub fn has_certificate(&self) -> bool {
        self.inner.active.read().expect("node TLS").is_some()
    }

    /// The server configuration of the node's RPC listener, once it has a certificate.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        let active = self.inner.active.read().expect("node TLS");
        active.as_ref().map(|a| a.server.clone())
    }

    /// The HTTPS client for calls to peers, once the node has a certificate.
    pub fn client(&self) -> Option<reqwest::Client> {
        let active = self.inner.active.read().expect("node TLS");
        active.as_ref().map(|a| a.client.clone())
    }

    /// The certificate slot (the node's current certificate), for other TLS servers of the
    /// node (REST) that present the same certificate.
    pub fn slot(&self) -> &CertSlot {
        &self.inner.slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_node_certificate_serves_a_handshake_its_ca_verifies() {
        install_crypto_provider();
        let ca = make_ca("c1").unwrap();
        let addr: IpAddr = "127.0.0.5".parse().unwrap();
        let request = key_request(addr).unwrap();
        let certificate = sign(&ca, &request.csr, addr).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(&ca.certificate).unwrap(),
            provider(),
        )
        .build()
        .unwrap();
        let der = first_certificate(&certificate).unwrap();
        let now = UnixTime::now();
        let name = ServerName::IpAddress(addr.into());
        verifier
            .verify_server_cert(&der, &[], &name, &[], now)
            .expect("the CA verifies the node's certificate for its address");
        let other = ServerName::IpAddress("127.0.0.6".parse::<IpAddr>().unwrap().into());
        assert!(verifier
            .verify_server_cert(&der, &[], &other, &[], now)
            .is_err());
        let stranger = make_ca("c2").unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(&stranger.certificate).unwrap(),
            provider(),
        )
        .build()
        .unwrap();
        assert!(verifier
            .verify_server_cert(&der, &[], &name, &[], now)
            .is_err());
        certified_key(&certificate, &request.key)
            .unwrap()
            .keys_match()
            .expect("the certificate is for the node's own key");
        assert_ne!(
            serial_of(&certificate).unwrap(),
            serial_of(&sign(&ca, &request.csr, addr).unwrap()).unwrap()
        );
    }

    #[test]
    fn fingerprints_compare_whatever_their_spelling() {
        let ca = make_ca("c1").unwrap();
        let print = fingerprint(&ca.certificate).unwrap();
        assert_eq!(print.len(), 32 * 3 - 1);
        assert!(same_fingerprint(&print, &print));
        assert!(same_fingerprint(
            &print.replace(':', "").to_lowercase(),
            &print
        ));
        assert!(!same_fingerprint("AB:CD", &print));
        let other = fingerprint(&make_ca("c1").unwrap().certificate).unwrap();
        assert!(!same_fingerprint(&other, &print));
    }

    #[test]
    fn the_node_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca("c1").unwrap();
        let addr: IpAddr = "127.0.0.5".parse().unwrap();
        let request = key_request(addr).unwrap();
        let credentials = NodeCredentials {
            ca: ca.certificate.clone(),
            certificate: sign(&ca, &request.csr, addr).unwrap(),
            key: request.key,
        };
        let tls = NodeTls::open(dir.path(), addr).unwrap();
        assert!(!tls.has_certificate());
        tls.install(credentials.clone()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(TLS_DIR)), 0o700);
        for file in [CA_FILE, CERT_FILE, KEY_FILE] {
            assert_eq!(mode(&dir.path().join(TLS_DIR).join(file)), 0o600, "{file}");
        }
        let again = NodeTls::open(dir.path(), addr).unwrap();
        assert_eq!(again.credentials(), Some(credentials));
    }
}
