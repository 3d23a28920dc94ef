/* Wine limitation: CryptDecodeObjectEx has no PKCS_PRIVATE_KEY_INFO decoder.
 *
 * Windows documents PKCS_PRIVATE_KEY_INFO among CryptDecodeObjectEx's structure types (a PKCS#8
 * PrivateKeyInfo into a CRYPT_PRIVATE_KEY_INFO); native-tls's Identity::from_pkcs8 starts with
 * it. Wine 8 has no decoder for it and fails with ERROR_FILE_NOT_FOUND (2, "File not found"),
 * whatever the key: the error switchboard's acceptor_from_pem reports under Wine.
 *
 * Usage: pkcs8_decode tests/certs/server.key (a PEM "PRIVATE KEY"). Exits 0 if it decodes. */
#include <windows.h>
#include <wincrypt.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    static char pem[8192];
    static BYTE der[8192];
    FILE *file = argc > 1 ? fopen(argv[1], "rb") : NULL;
    if (!file) {
        printf("usage: pkcs8_decode KEY.pem\n");
        return 2;
    }
    DWORD pem_length = (DWORD)fread(pem, 1, sizeof pem, file), der_length = sizeof der;
    fclose(file);
    if (!CryptStringToBinaryA(pem, pem_length, CRYPT_STRING_BASE64HEADER, der, &der_length, NULL,
                              NULL)) {
        printf("not PEM (error %lu)\n", GetLastError());
        return 2;
    }
    CRYPT_PRIVATE_KEY_INFO *info;
    DWORD info_length;
    if (!CryptDecodeObjectEx(X509_ASN_ENCODING | PKCS_7_ASN_ENCODING, PKCS_PRIVATE_KEY_INFO, der,
                             der_length, CRYPT_DECODE_ALLOC_FLAG, NULL, &info, &info_length)) {
        printf("PKCS_PRIVATE_KEY_INFO: error %lu\n", GetLastError());
        return 1;
    }
    printf("PKCS_PRIVATE_KEY_INFO: algorithm %s\n", info->Algorithm.pszObjId);
    LocalFree(info);
    return 0;
}
