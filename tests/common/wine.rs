//! Wine, which CI runs the Windows build's tests under (.ci/run). Where Wine differs from
//! Windows' documented behaviour, the difference is a [`WineLimitation`] with a program of a few
//! lines under `.ci/wine/repro/` that shows it without switchboard; a test that depends on one
//! returns early under Wine through [`skip_under_wine`], which says so on stderr.

use std::io::Write;
use std::sync::OnceLock;

/// A difference between Wine and documented Windows behaviour.
#[derive(Debug)]
pub struct WineLimitation {
    /// What Wine does differently.
    pub what: &'static str,
    /// The program that shows it, relative to the repository.
    pub reproduction: &'static str,
}

/// Windows: once the peer resets the connection, `recv` fails with `WSAECONNRESET` (closesocket,
/// "hard or abortive close"). Wine 8 reports a reset that arrived while no receive was waiting
/// as a clean end of stream: a client never sees an abort, a refusal or a forced close as a
/// reset, and the server never sees a client's reset as one.
pub const WINE_RESET_READ_AS_EOF: WineLimitation = WineLimitation {
    what: "a reset that arrives before the receive reads as a clean end of stream",
    reproduction: ".ci/wine/repro/reset_read_as_eof.c",
};

/// Windows: `AcceptSecurityContext` is SChannel's server half of a handshake. Wine 8 implements
/// the client half only and fails it with `SEC_E_UNSUPPORTED_FUNCTION`: no native-tls acceptor,
/// and so no switchboard TLS server, completes a handshake under Wine.
pub const WINE_NO_TLS_SERVER: WineLimitation = WineLimitation {
    what: "SChannel's AcceptSecurityContext is unsupported, no TLS server can handshake",
    reproduction: ".ci/wine/repro/schannel_server.c",
};

/// Windows: `CryptDecodeObjectEx` decodes `PKCS_PRIVATE_KEY_INFO`, the PKCS#8 structure
/// native-tls's `Identity::from_pkcs8` starts with. Wine 8 has no decoder for it and fails with
/// `ERROR_FILE_NOT_FOUND` ("File not found"), whatever the key. The Windows tests use PKCS#12.
pub const WINE_NO_PKCS8_DECODER: WineLimitation = WineLimitation {
    what: "CryptDecodeObjectEx has no PKCS_PRIVATE_KEY_INFO decoder",
    reproduction: ".ci/wine/repro/pkcs8_decode.c",
};

/// Windows: `PFXImportCertStore` imports ECDSA keys (into CNG). Wine 8 imports RSA keys only
/// ("key algorithm 4 not supported"). The Windows tests' identities are RSA.
pub const WINE_NO_ECDSA_PFX: WineLimitation = WineLimitation {
    what: "PFXImportCertStore imports no ECDSA key",
    reproduction: ".ci/wine/repro/ecdsa_pfx.c",
};

/// Whether this process runs under Wine. Asked of the process itself, so that the test binaries
/// behave the same however they are started: Wine's ntdll exports `wine_get_version`, Windows'
/// does not (a documented way to tell, in Wine's developer FAQ).
pub fn under_wine() -> bool {
    static UNDER_WINE: OnceLock<bool> = OnceLock::new();
    *UNDER_WINE.get_or_init(ntdll_exports_wine_get_version)
}

#[cfg(windows)]
fn ntdll_exports_wine_get_version() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    let ntdll: Vec<u16> = "ntdll.dll".encode_utf16().chain([0]).collect();
    // SAFETY: both functions only read the NUL-terminated strings they are given, which live
    // until the block ends, and return a handle or an address (null if none). ntdll.dll is
    // mapped into every Windows process for its whole life, so the module handle stays valid
    // (GetModuleHandleW takes no reference to release). The address is only tested for null,
    // never called.
    unsafe {
        let module = GetModuleHandleW(ntdll.as_ptr());
        !module.is_null() && GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

#[cfg(not(windows))]
fn ntdll_exports_wine_get_version() -> bool {
    false
}

/// True (and the test should return) when it runs under Wine, which lacks what it checks: writes
/// `skipped under Wine: <test>: <what> (<reproduction>)` to stderr, past the test harness's
/// capture, where CI counts the skips.
pub fn skip_under_wine(limitation: &WineLimitation) -> bool {
    if !under_wine() {
        return false;
    }
    // The harness names each test's thread after the test. One write, starting on a line of its
    // own: the harness may have printed "test <name> ... " without its newline.
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!(
        "\nskipped under Wine: {test}: {} ({})\n",
        limitation.what, limitation.reproduction
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    true
}
