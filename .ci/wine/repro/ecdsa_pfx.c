/* Wine limitation: PFXImportCertStore imports no ECDSA key.
 *
 * Windows imports PKCS#12 files with ECDSA keys (into a CNG key storage provider; SChannel
 * serves ECDSA certificates). Wine 8 fails the whole import ("key algorithm 4 not supported"
 * with WINEDEBUG=fixme+crypt); an RSA key in the same kind of file imports.
 *
 * Usage: ecdsa_pfx FILE.p12 PASSWORD. .ci/wine/repro/run makes the file from tests/certs/server.pem
 * and server.key (ECDSA P-256). Exits 0 if a certificate with its private key was imported. */
#include <windows.h>
#include <wincrypt.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    static BYTE pfx[16384];
    static WCHAR password[256];
    FILE *file = argc > 2 ? fopen(argv[1], "rb") : NULL;
    if (!file) {
        printf("usage: ecdsa_pfx FILE.p12 PASSWORD\n");
        return 2;
    }
    CRYPT_DATA_BLOB blob = {(DWORD)fread(pfx, 1, sizeof pfx, file), pfx};
    fclose(file);
    MultiByteToWideChar(CP_UTF8, 0, argv[2], -1, password, 256);
    HCERTSTORE store = PFXImportCertStore(&blob, password, 0);
    if (!store) {
        printf("PFXImportCertStore failed (error %lu)\n", GetLastError());
        return 1;
    }
    PCCERT_CONTEXT certificate = NULL;
    while ((certificate = CertEnumCertificatesInStore(store, certificate))) {
        DWORD size = 0;
        if (CertGetCertificateContextProperty(certificate, CERT_KEY_PROV_INFO_PROP_ID, NULL,
                                              &size)) {
            printf("imported a certificate with its key\n");
            return 0;
        }
    }
    printf("imported no key\n");
    return 1;
}
