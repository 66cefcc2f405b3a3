//! Challenge–response with a shared secret: each side sends a fresh random nonce and proves it
//! holds the secret with HMAC-SHA256 over both nonces, tagged by direction (so one side's proof
//! can never be replayed as the other's). The secret itself never travels.

use crate::error::{SetupError, TokenOrigin};
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

/// The fewest bytes a token may have.
pub const MIN_TOKEN_LEN: usize = 16;

impl Token {
    /// A token of at least [`MIN_TOKEN_LEN`] bytes (surrounding whitespace ignored).
    pub fn new(bytes: &[u8]) -> Result<Token, SetupError> {
        Token::with_origin(bytes, TokenOrigin::Given)
    }

    fn with_origin(bytes: &[u8], origin: TokenOrigin) -> Result<Token, SetupError> {
        let t = bytes.trim_ascii();
        if t.len() < MIN_TOKEN_LEN {
            return Err(SetupError::TokenTooShort {
                len: t.len(),
                origin,
            });
        }
        Ok(Token(t.to_vec()))
    }

    /// Read from a file, which must not be readable by group or others.
    pub fn from_file(path: &Path) -> Result<Token, SetupError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| SetupError::io(path.display(), e))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SetupError::TokenFileMode {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| SetupError::io(path.display(), e))?;
        Token::with_origin(&bytes, TokenOrigin::File(path.to_path_buf()))
    }

    /// From `KILN_TOKEN`, if set.
    pub fn from_env() -> Option<Result<Token, SetupError>> {
        std::env::var_os(TOKEN_ENV).map(|v| {
            use std::os::unix::ffi::OsStrExt;
            Token::with_origin(v.as_bytes(), TokenOrigin::Env)
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
