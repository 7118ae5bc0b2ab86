"""etcd's errors: the gRPC status code and the exact message text clients match on.

The server raises ``EtcdError``; the API layer turns it into a gRPC status with ``code`` and ``message``.
Messages are etcd 3.4's, verbatim (clients such as clientv3 compare the strings).
"""

from __future__ import annotations


class EtcdError(Exception):
    """An error etcd clients know. ``code`` is a grpc.StatusCode name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[EtcdError], tuple[str, str]]:
        return (EtcdError, (self.code, self.message))

    def __repr__(self) -> str:
        return f"EtcdError({self.code}, {self.message!r})"


def _e(code: str, message: str) -> EtcdError:
    return EtcdError(code, message)


EMPTY_KEY = _e("INVALID_ARGUMENT", "etcdserver: key is not provided")
KEY_NOT_FOUND = _e("INVALID_ARGUMENT", "etcdserver: key not found")
VALUE_PROVIDED = _e("INVALID_ARGUMENT", "etcdserver: value is provided")
LEASE_PROVIDED = _e("INVALID_ARGUMENT", "etcdserver: lease is provided")
TOO_MANY_OPS = _e("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _e("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION = _e("INVALID_ARGUMENT", "etcdserver: invalid sort option")
COMPACTED = _e("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _e("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _e("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")

LEASE_NOT_FOUND = _e("NOT_FOUND", "etcdserver: requested lease not found")
LEASE_EXIST = _e("FAILED_PRECONDITION", "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _e("OUT_OF_RANGE", "etcdserver: too large lease TTL")

MEMBER_EXIST = _e("FAILED_PRECONDITION", "etcdserver: member ID already exist")
PEER_URL_EXIST = _e("FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
#: etcd 3.4 does not translate this one for gRPC: clients see code Unknown (checked against etcd 3.4.23).
MEMBER_NOT_ENOUGH_STARTED = _e(
    "UNKNOWN", "etcdserver: re-configuration failed due to not enough started members"
)
MEMBER_BAD_URLS = _e("INVALID_ARGUMENT", "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = _e("NOT_FOUND", "etcdserver: member not found")
MEMBER_NOT_LEARNER = _e("FAILED_PRECONDITION", "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = _e(
    "FAILED_PRECONDITION", "etcdserver: can only promote a learner member which is in sync with leader"
)
TOO_MANY_LEARNERS = _e("FAILED_PRECONDITION", "etcdserver: too many learner members in cluster")

REQUEST_TOO_LARGE = _e("INVALID_ARGUMENT", "etcdserver: request is too large")
TOO_MANY_REQUESTS = _e("RESOURCE_EXHAUSTED", "etcdserver: too many requests")

NO_LEADER = _e("UNAVAILABLE", "etcdserver: no leader")
NOT_LEADER = _e("FAILED_PRECONDITION", "etcdserver: not leader")
LEADER_CHANGED = _e("UNAVAILABLE", "etcdserver: leader changed")
NOT_CAPABLE = _e("UNAVAILABLE", "etcdserver: not capable")
STOPPED = _e("UNAVAILABLE", "etcdserver: server stopped")
TIMEOUT = _e("UNAVAILABLE", "etcdserver: request timed out")
TIMEOUT_DUE_TO_LEADER_FAIL = _e(
    "UNAVAILABLE", "etcdserver: request timed out, possibly due to previous leader failure"
)
TIMEOUT_LEADER_TRANSFER = _e("UNAVAILABLE", "etcdserver: request timed out, leader transfer took too long")
UNHEALTHY = _e("UNAVAILABLE", "etcdserver: unhealthy cluster")
CORRUPT = _e("DATA_LOSS", "etcdserver: corrupt cluster")
NOT_SUPPORTED_FOR_LEARNER = _e("FAILED_PRECONDITION", "etcdserver: rpc not supported for learner")
BAD_LEADER_TRANSFEREE = _e("FAILED_PRECONDITION", "etcdserver: bad leader transferee")

AUTH_NOT_ENABLED = _e("FAILED_PRECONDITION", "etcdserver: authentication is not enabled")
ROOT_USER_NOT_EXIST = _e("FAILED_PRECONDITION", "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST = _e("FAILED_PRECONDITION", "etcdserver: root user does not have root role")
USER_ALREADY_EXIST = _e("FAILED_PRECONDITION", "etcdserver: user name already exists")
USER_EMPTY = _e("INVALID_ARGUMENT", "etcdserver: user name is empty")
USER_NOT_FOUND = _e("FAILED_PRECONDITION", "etcdserver: user name not found")
ROLE_ALREADY_EXIST = _e("FAILED_PRECONDITION", "etcdserver: role name already exists")
ROLE_NOT_FOUND = _e("FAILED_PRECONDITION", "etcdserver: role name not found")
ROLE_EMPTY = _e("INVALID_ARGUMENT", "etcdserver: role name is empty")
AUTH_FAILED = _e("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = _e("PERMISSION_DENIED", "etcdserver: permission denied")
ROLE_NOT_GRANTED = _e("FAILED_PRECONDITION", "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _e("FAILED_PRECONDITION", "etcdserver: permission is not granted to the role")
AUTH_OLD_REVISION = _e("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
INVALID_AUTH_TOKEN = _e("UNAUTHENTICATED", "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = _e("INVALID_ARGUMENT", "etcdserver: invalid auth management")
#: etcd 3.4 returns this one untranslated (gRPC Unknown) to a password login of a --no-password user.
NO_PASSWORD_USER = _e("UNKNOWN", "auth: authentication failed, password was given for no password user")
