//! An upstream's `tls.ca_file`: the CA certificates of a PEM file, read once by
//! validation (so `check` and a reload refuse a file a start would) and again by the
//! upstream's TLS setup, which trusts them.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Adds the CA certificates of the PEM file `file` to `roots`; says why it cannot when
/// the file cannot be read, holds no certificate, or holds one that does not parse.
pub(crate) fn add_ca_file(roots: &mut rustls::RootCertStore, file: &Path) -> Result<(), String> {
    let certs = CertificateDer::pem_file_iter(file).map_err(|e| e.to_string())?;
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
        added += 1;
    }
    if added == 0 {
        return Err("no PEM certificate in it".to_owned());
    }
    Ok(())
}
