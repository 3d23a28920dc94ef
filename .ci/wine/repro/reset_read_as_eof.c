/* Wine limitation: a reset that arrives before the receive reads as a clean end of stream.
 *
 * Windows documents (closesocket: "Graceful shutdown, linger options, and socket closure") that
 * closing a socket whose SO_LINGER is {l_onoff = 1, l_linger = 0} is a hard, abortive close that
 * resets the connection, and that the peer's recv then fails with WSAECONNRESET. Under Wine 8 the
 * aborting side does send the RST (a Linux peer's read fails with ECONNRESET), and a recv already
 * waiting when it arrives fails with WSAECONNRESET; but once the RST has arrived, recv returns 0,
 * a clean end of stream, as if the peer had closed gracefully.
 *
 * Prints "reset" (Windows) or "clean end of stream" (Wine 8); exits 0 only for "reset". */
#include <winsock2.h>
#include <stdio.h>

int main(void)
{
    WSADATA wsa;
    WSAStartup(MAKEWORD(2, 2), &wsa);
    struct sockaddr_in address = {0};
    int length = sizeof address;
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    SOCKET listener = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    bind(listener, (struct sockaddr *)&address, sizeof address);
    listen(listener, 1);
    getsockname(listener, (struct sockaddr *)&address, &length);
    SOCKET client = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    connect(client, (struct sockaddr *)&address, sizeof address);
    SOCKET accepted = accept(listener, NULL, NULL);

    struct linger abortive = {1, 0};
    setsockopt(accepted, SOL_SOCKET, SO_LINGER, (const char *)&abortive, sizeof abortive);
    closesocket(accepted);
    Sleep(200); /* the RST arrives before the receive */

    char byte;
    int received = recv(client, &byte, 1, 0);
    if (received == SOCKET_ERROR && WSAGetLastError() == WSAECONNRESET) {
        printf("reset\n");
        return 0;
    }
    if (received == 0)
        printf("clean end of stream\n");
    else
        printf("recv returned %d, error %d\n", received, WSAGetLastError());
    return 1;
}
