/* Wine limitation: SChannel has no server side.
 *
 * Windows documents AcceptSecurityContext (Schannel) as the server's half of a TLS handshake:
 * given a client's ClientHello it returns SEC_I_CONTINUE_NEEDED and the server's reply. Wine 8's
 * Schannel provider implements only the client half; AcceptSecurityContext fails with
 * SEC_E_UNSUPPORTED_FUNCTION, so no native-tls TlsAcceptor can complete a handshake.
 *
 * Usage: schannel_server tests/certs/server.p12 (an RSA identity, password "switchboard", which
 * Wine does import). Prints the status; exits 0 only for SEC_I_CONTINUE_NEEDED. */
#define SECURITY_WIN32
#include <windows.h>
#include <wincrypt.h>
#include <schannel.h>
#include <security.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    static BYTE pfx[16384];
    FILE *file = argc > 1 ? fopen(argv[1], "rb") : NULL;
    if (!file) {
        printf("usage: schannel_server SERVER.p12\n");
        return 2;
    }
    CRYPT_DATA_BLOB blob = {(DWORD)fread(pfx, 1, sizeof pfx, file), pfx};
    fclose(file);
    HCERTSTORE store = PFXImportCertStore(&blob, L"switchboard", 0);
    PCCERT_CONTEXT certificate = store ? CertEnumCertificatesInStore(store, NULL) : NULL;
    if (!certificate) {
        printf("the identity did not import (error %lu)\n", GetLastError());
        return 2;
    }

    SCHANNEL_CRED server_settings = {0}, client_settings = {0};
    server_settings.dwVersion = client_settings.dwVersion = SCHANNEL_CRED_VERSION;
    server_settings.cCreds = 1;
    server_settings.paCred = &certificate;
    client_settings.dwFlags = SCH_CRED_MANUAL_CRED_VALIDATION | SCH_CRED_NO_DEFAULT_CREDS;
    CredHandle server, client;
    SECURITY_STATUS status;
    status = AcquireCredentialsHandleW(NULL, UNISP_NAME_W, SECPKG_CRED_INBOUND, NULL,
                                       &server_settings, NULL, NULL, &server, NULL);
    if (status != SEC_E_OK) {
        printf("server credentials: 0x%08lx\n", (unsigned long)status);
        return 2;
    }
    AcquireCredentialsHandleW(NULL, UNISP_NAME_W, SECPKG_CRED_OUTBOUND, NULL, &client_settings,
                              NULL, NULL, &client, NULL);

    /* The client's first flight: a ClientHello. */
    CtxtHandle client_context, server_context;
    ULONG attributes;
    SecBuffer hello = {0, SECBUFFER_TOKEN, NULL};
    SecBufferDesc hello_desc = {SECBUFFER_VERSION, 1, &hello};
    InitializeSecurityContextW(&client, NULL, L"localhost",
                               ISC_REQ_ALLOCATE_MEMORY | ISC_REQ_STREAM, 0, 0, NULL, 0,
                               &client_context, &hello_desc, &attributes, NULL);

    /* The server's answer to it. */
    SecBuffer input[2] = {{hello.cbBuffer, SECBUFFER_TOKEN, hello.pvBuffer},
                          {0, SECBUFFER_EMPTY, NULL}};
    SecBufferDesc input_desc = {SECBUFFER_VERSION, 2, input};
    SecBuffer reply = {0, SECBUFFER_TOKEN, NULL};
    SecBufferDesc reply_desc = {SECBUFFER_VERSION, 1, &reply};
    status = AcceptSecurityContext(&server, NULL, &input_desc,
                                   ASC_REQ_ALLOCATE_MEMORY | ASC_REQ_STREAM, 0, &server_context,
                                   &reply_desc, &attributes, NULL);
    printf("ClientHello of %lu bytes; AcceptSecurityContext: 0x%08lx (%s)\n", hello.cbBuffer,
           (unsigned long)status,
           status == SEC_I_CONTINUE_NEEDED       ? "SEC_I_CONTINUE_NEEDED"
           : status == SEC_E_UNSUPPORTED_FUNCTION ? "SEC_E_UNSUPPORTED_FUNCTION"
                                                  : "other");
    return status == SEC_I_CONTINUE_NEEDED ? 0 : 1;
}
