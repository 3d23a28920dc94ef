/* The one export of bcryptprimitives.dll that Rust's standard library imports (its random
 * source, since Rust 1.78), for Wine 8, which does not ship the DLL. CI builds it with mingw and
 * puts it beside the test executables; Windows itself has the real DLL and never sees this one.
 *
 * ProcessPrng is documented to always succeed and return TRUE; RtlGenRandom (exported by
 * advapi32 as SystemFunction036) takes a ULONG length, so larger requests go in pieces. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG piece = length > 0x80000000u ? 0x80000000u : (ULONG)length;
        if (!SystemFunction036(data, piece))
            return FALSE;
        data += piece;
        length -= piece;
    }
    return TRUE;
}
