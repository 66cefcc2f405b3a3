//! Challenge–response with a shared secret: each side sends a fresh random nonce and proves it
//! holds the secret with HMAC-SHA256 over both nonces, tagged by direction (so one side's proof
//! can never be replayed as the other's). The secret itself never travels.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// The environment variable that may hold the token.
pub const TOKEN_ENV: &str = "KILN_TOKEN";

/// A shared secret.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

impl Token {
    /// A token of at least 16 bytes (surrounding whitespace ignored).
    pub fn new(bytes: &[u8]) -> Result<Token, String> {
        let t = bytes.trim_ascii();
        if t.len() < 16 {
            return Err(format!(
                "the token is {} bytes; at least 16 are required",
                t.len()
            ));
        }
        Ok(Token(t.to_vec()))
    }

    /// Read from a file, which must not be readable by group or others.
    pub fn from_file(path: &Path) -> Result<Token, String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{}: the token file is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Token::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// From `KILN_TOKEN`, if set.
    pub fn from_env() -> Option<Result<Token, String>> {
        std::env::var_os(TOKEN_ENV).map(|v| {
            use std::os::unix::ffi::OsStrExt;
            Token::new(v.as_bytes()).map_err(|e| format!("{TOKEN_ENV}: {e}"))
        })
    }

    fn mac(&self, tag: &[u8], first: &[u8; 32], second: &[u8; 32]) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        m.update(tag);
        m.update(first);
        m.update(second);
        m
    }

    /// The controller's proof.
    pub fn client_proof(&self, server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(b"kiln-auth-v1 controller", server_nonce, client_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The executor's proof.
    pub fn server_proof(&self, server_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(b"kiln-auth-v1 executor", client_nonce, server_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Check the controller's proof in constant time.
    pub fn verify_client(
        &self,
        server_nonce: &[u8; 32],
        client_nonce: &[u8; 32],
        mac: &[u8],
    ) -> bool {
        self.mac(b"kiln-auth-v1 controller", server_nonce, client_nonce)
            .verify_slice(mac)
            .is_ok()
    }

    /// Check the executor's proof in constant time.
    pub fn verify_server(
        &self,
        server_nonce: &[u8; 32],
        client_nonce: &[u8; 32],
        mac: &[u8],
    ) -> bool {
        self.mac(b"kiln-auth-v1 executor", client_nonce, server_nonce)
            .verify_slice(mac)
            .is_ok()
    }
}

/// 32 bytes from the system's random source.
pub fn nonce() -> std::io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(n)
}
