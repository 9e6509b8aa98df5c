//! One rustls crypto provider for the whole process.
//!
//! kube and reqwest both use rustls; with more than one provider compiled in,
//! rustls cannot pick one and TLS fails at run time. The operator compiles
//! only `ring` (kube's default) and installs it before any client is built.

/// Installs `ring` as the process-wide rustls provider. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
