// libxcrypt (Debian's libcrypt): bcrypt hashes for nats-server's users file.
#include <crypt.h>
