"""``auth enable|disable|status``, ``user add|delete|get|list|passwd|grant-role|revoke-role`` and
``role add|delete|get|list|grant-permission|revoke-permission``: etcdctl 3.4's grammar, messages and exit codes
(simple output format)."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from quorumkv.api.authpb import auth_pb2
from quorumkv.api.etcdserverpb import rpc_pb2
from quorumkv.cli.ctl.app import GoFlag, bad_args, command, group, root
from quorumkv.cli.ctl.gofmt import go_json
from quorumkv.cli.ctl.printers import write_out
from quorumkv.cli.ctl.session import EXIT_ERROR, CtlError, Session, Settings, error_text
from quorumkv.client import EtcdError

__all__ = ["auth_group", "role_group", "user_group"]

auth_group = group(root, "auth", short="Enable or disable authentication", usage="auth <enable or disable>")
user_group = group(root, "user", short="User related commands", usage="user <subcommand>")
role_group = group(root, "role", short="Role related commands", usage="role <subcommand>")


def _show(settings: Settings, resp: Any, simple: str) -> None:
    """etcdctl's printers for auth responses: ``-w json`` prints the response (Go's encoding/json of it), every
    other format the simple text."""
    write_out(go_json(resp) + "\n" if settings.write_out == "json" else simple)


def _call(settings: Settings, method: str, request: Any) -> Any:
    with Session(settings) as session:
        return session.call("Auth", method, request)


# -- auth ------------------------------------------------------------------------------------------------------


@command(auth_group, "enable", short="Enables authentication", usage="auth enable")
def auth_enable_cmd(settings: Settings, args: list[str]) -> None:
    if args:
        bad_args("auth enable command does not accept any arguments")
    with Session(settings) as session:
        session.dial()
        while True:  # etcdctl: create the root role and grant it to root if that is all that is missing
            try:
                resp = session.client.raw_call("Auth", "AuthEnable", rpc_pb2.AuthEnableRequest())
                break
            except EtcdError as err:
                session.warn(err)  # clientv3's retry interceptor logs the refusal, as any failed unary call
                if err.message != "etcdserver: root user does not have root role":
                    raise CtlError(EXIT_ERROR, error_text(err)) from None
                session.call("Auth", "RoleAdd", rpc_pb2.AuthRoleAddRequest(name="root"))
                session.call("Auth", "UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    del resp
    write_out("Authentication Enabled\n")  # etcdctl 3.4 prints this text whatever -w says


@command(auth_group, "disable", short="Disables authentication", usage="auth disable")
def auth_disable_cmd(settings: Settings, args: list[str]) -> None:
    if args:
        bad_args("auth disable command does not accept any arguments")
    _call(settings, "AuthDisable", rpc_pb2.AuthDisableRequest())
    write_out("Authentication Disabled\n")  # whatever -w says, as etcdctl 3.4


@command(auth_group, "status", short="Returns authentication status", usage="auth status")
def auth_status_cmd(settings: Settings, args: list[str]) -> None:
    if args:
        bad_args("auth status command does not accept any arguments")
    resp = _call(settings, "AuthStatus", rpc_pb2.AuthStatusRequest())
    write_out(f"Authentication Status: {'true' if resp.enabled else 'false'}\nAuthRevision: {resp.authRevision}\n")


auth_status_cmd.hidden = True  # etcdctl 3.5's command: absent from etcdctl 3.4's help, which the listings match


# -- user ------------------------------------------------------------------------------------------------------

INTERACTIVE = GoFlag("interactive", "bool", True, "Read password from stdin instead of interactive terminal")
NEW_USER_PASSWORD = GoFlag("new-user-password", "string", "", "Supply password from the command line flag")
NO_PASSWORD = GoFlag("no-password", "bool", False, "Create a user without password (CN based auth only)")
DETAIL = GoFlag("detail", "bool", False, "Show permissions of roles granted to the user")


def _read_password(prompt_name: str, interactive: bool) -> str:
    if not interactive:
        line = sys.stdin.readline().strip()
        return line.split()[0] if line.split() else ""
    first = getpass.getpass(f"Password of {prompt_name}: ")
    if not first:
        raise CtlError(1, "empty password")
    second = getpass.getpass(f"Type password of {prompt_name} again for confirmation: ")
    if first != second:
        raise CtlError(1, "given passwords are different")
    return first


@command(user_group, "add", short="Adds a new user", usage="user add <user name or user:password> [options]",
         flags=(INTERACTIVE, NEW_USER_PASSWORD, NO_PASSWORD))
def user_add_cmd(settings: Settings, args: list[str], interactive: bool, new_user_password: str,
                 no_password: bool) -> None:
    if len(args) != 1:
        bad_args("user add command requires user name as its argument")
    options = auth_pb2.UserAddOptions(no_password=no_password)
    password = ""
    if no_password:
        name = args[0]
    elif new_user_password:
        name, password = args[0], new_user_password
    else:
        name, sep, password = args[0].partition(":")
        if not sep:
            name = args[0]
            password = _read_password(name, interactive)
        elif not name:
            bad_args("empty user name is not allowed")
    resp = _call(settings, "UserAdd", rpc_pb2.AuthUserAddRequest(name=name, password=password, options=options))
    _show(settings, resp, f"User {name} created\n")


@command(user_group, "delete", short="Deletes a user", usage="user delete <user name>")
def user_delete_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        bad_args("user delete command requires user name as its argument")
    _show(settings, _call(settings, "UserDelete", rpc_pb2.AuthUserDeleteRequest(name=args[0])),
          f"User {args[0]} deleted\n")


@command(user_group, "get", short="Gets detailed information of a user", usage="user get <user name> [options]",
         flags=(DETAIL,))
def user_get_cmd(settings: Settings, args: list[str], detail: bool) -> None:
    if len(args) != 1:
        bad_args("user get command requires user name as its argument")
    name = args[0]
    with Session(settings) as session:
        resp = session.call("Auth", "UserGet", rpc_pb2.AuthUserGetRequest(name=name))
        if not detail:
            _show(settings, resp, f"User: {name}\nRoles:{''.join(' ' + r for r in resp.roles)}\n")
            return
        out = [f"User: {name}\n"]
        for role in resp.roles:
            perms = session.call("Auth", "RoleGet", rpc_pb2.AuthRoleGetRequest(role=role))
            out.append("\n" + (go_json(perms) + "\n" if settings.write_out == "json" else role_text(role, perms)))
        write_out("".join(out))


@command(user_group, "list", short="Lists all users", usage="user list")
def user_list_cmd(settings: Settings, args: list[str]) -> None:
    if args:
        bad_args("user list command requires no arguments")
    resp = _call(settings, "UserList", rpc_pb2.AuthUserListRequest())
    _show(settings, resp, "".join(f"{u}\n" for u in resp.users))


@command(user_group, "passwd", short="Changes password of user", usage="user passwd <user name> [options]",
         flags=(GoFlag("interactive", "bool", True,
                       "If true, read password from stdin instead of interactive terminal"),))
def user_passwd_cmd(settings: Settings, args: list[str], interactive: bool) -> None:
    if len(args) != 1:
        bad_args("user passwd command requires user name as its argument")
    password = _read_password(args[0], interactive)
    resp = _call(settings, "UserChangePassword", rpc_pb2.AuthUserChangePasswordRequest(name=args[0], password=password))
    _show(settings, resp, "Password updated\n")


@command(user_group, "grant-role", short="Grants a role to a user", usage="user grant-role <user name> <role name>")
def user_grant_role_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 2:
        bad_args("user grant command requires user name and role name as its argument")
    resp = _call(settings, "UserGrantRole", rpc_pb2.AuthUserGrantRoleRequest(user=args[0], role=args[1]))
    _show(settings, resp, f"Role {args[1]} is granted to user {args[0]}\n")


@command(user_group, "revoke-role", short="Revokes a role from a user",
         usage="user revoke-role <user name> <role name>")
def user_revoke_role_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 2:
        bad_args("user revoke-role requires user name and role name as its argument")
    resp = _call(settings, "UserRevokeRole", rpc_pb2.AuthUserRevokeRoleRequest(name=args[0], role=args[1]))
    _show(settings, resp, f"Role {args[1]} is revoked from user {args[0]}\n")


# -- role ------------------------------------------------------------------------------------------------------


def prefix_range_end(key: str) -> str:
    """clientv3.GetPrefixRangeEnd on a string (bytes above 0xff roll over as etcd's do)."""
    end = bytearray(key.encode("utf-8", "surrogateescape"))
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1]).decode("utf-8", "surrogateescape")
    return "\x00"


def role_text(role: str, resp: Any) -> str:
    """etcdctl's simple printer for a role's permissions."""

    def show(perm: Any) -> str:
        key = perm.key.decode("utf-8", "surrogateescape")
        end = perm.range_end.decode("utf-8", "surrogateescape")
        if not end:
            return f"\t{key}\n"
        text = f"\t[{key}, {end})" if end != "\x00" else f"\t[{key}, <open ended>"
        if prefix_range_end(key) == end:
            text += f" (prefix {key})"
        return text + "\n"

    out = [f"Role {role}\n", "KV Read:\n"]
    out += [show(p) for p in resp.perm if p.permType in (auth_pb2.Permission.READ, auth_pb2.Permission.READWRITE)]
    out.append("KV Write:\n")
    out += [show(p) for p in resp.perm if p.permType in (auth_pb2.Permission.WRITE, auth_pb2.Permission.READWRITE)]
    return "".join(out)


PREFIX = GoFlag("prefix", "bool", False, "grant a prefix permission")
FROM_KEY = GoFlag("from-key", "bool", False,
                  "grant a permission of keys that are greater than or equal to the given key using byte compare")
REVOKE_PREFIX = GoFlag("prefix", "bool", False, "revoke a prefix permission")
REVOKE_FROM_KEY = GoFlag("from-key", "bool", False,
                         "revoke a permission of keys that are greater than or equal to the given key using byte "
                         "compare")


def perm_range(args: list[str], prefix: bool, from_key: bool) -> tuple[str, str]:
    """etcdctl's permRange: the key and range end a permission command's arguments and flags mean."""
    key = args[0]
    if not key:
        if prefix and from_key:
            bad_args("--from-key and --prefix flags are mutually exclusive")
        return "\x00", ("\x00" if prefix or from_key else "")
    if len(args) == 1:
        if prefix:
            if from_key:
                bad_args("--from-key and --prefix flags are mutually exclusive")
            return key, prefix_range_end(key)
        return key, ("\x00" if from_key else "")
    if prefix:
        bad_args("unexpected endkey argument with --prefix flag")
    if from_key:
        bad_args("unexpected endkey argument with --from-key flag")
    return key, args[1]


@command(role_group, "add", short="Adds a new role", usage="role add <role name>")
def role_add_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        bad_args("role add command requires role name as its argument")
    _show(settings, _call(settings, "RoleAdd", rpc_pb2.AuthRoleAddRequest(name=args[0])), f"Role {args[0]} created\n")


@command(role_group, "delete", short="Deletes a role", usage="role delete <role name>")
def role_delete_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        bad_args("role delete command requires role name as its argument")
    _show(settings, _call(settings, "RoleDelete", rpc_pb2.AuthRoleDeleteRequest(role=args[0])),
          f"Role {args[0]} deleted\n")


@command(role_group, "get", short="Gets detailed information of a role", usage="role get <role name>")
def role_get_cmd(settings: Settings, args: list[str]) -> None:
    if len(args) != 1:
        bad_args("role get command requires role name as its argument")
    resp = _call(settings, "RoleGet", rpc_pb2.AuthRoleGetRequest(role=args[0]))
    _show(settings, resp, role_text(args[0], resp))


@command(role_group, "list", short="Lists all roles", usage="role list")
def role_list_cmd(settings: Settings, args: list[str]) -> None:
    if args:
        bad_args("role list command requires no arguments")
    resp = _call(settings, "RoleList", rpc_pb2.AuthRoleListRequest())
    _show(settings, resp, "".join(f"{r}\n" for r in resp.roles))


@command(role_group, "grant-permission", short="Grants a key to a role",
         usage="role grant-permission [options] <role name> <permission type> <key> [endkey]",
         flags=(FROM_KEY, PREFIX))
def role_grant_cmd(settings: Settings, args: list[str], from_key: bool, prefix: bool) -> None:
    if len(args) < 3:
        bad_args("role grant command requires role name, permission type, and key [endkey] as its argument")
    perm_type = args[1].upper()
    if perm_type not in ("READ", "WRITE", "READWRITE"):
        bad_args(f"invalid permission type: {args[1]}")
    key, end = perm_range(args[2:], prefix, from_key)
    perm = auth_pb2.Permission(permType=perm_type, key=key.encode("utf-8", "surrogateescape"),
                               range_end=end.encode("utf-8", "surrogateescape"))
    resp = _call(settings, "RoleGrantPermission", rpc_pb2.AuthRoleGrantPermissionRequest(name=args[0], perm=perm))
    _show(settings, resp, f"Role {args[0]} updated\n")


@command(role_group, "revoke-permission", short="Revokes a key from a role",
         usage="role revoke-permission <role name> <key> [endkey]", flags=(REVOKE_FROM_KEY, REVOKE_PREFIX))
def role_revoke_cmd(settings: Settings, args: list[str], from_key: bool, prefix: bool) -> None:
    if len(args) < 2:
        bad_args("role revoke-permission command requires role name and key [endkey] as its argument")
    key, end = perm_range(args[1:], prefix, from_key)
    resp = _call(settings, "RoleRevokePermission", rpc_pb2.AuthRoleRevokePermissionRequest(
        role=args[0], key=key.encode("utf-8", "surrogateescape"), range_end=end.encode("utf-8", "surrogateescape")))
    if settings.write_out == "json":
        _show(settings, resp, "")
        return
    shown = args[1]  # etcdctl prints the key as given ("" for the whole key space, not "\x00")
    if not end:
        write_out(f"Permission of key {shown} is revoked from role {args[0]}\n")
    elif end != "\x00":
        write_out(f"Permission of range [{shown}, {end}) is revoked from role {args[0]}\n")
    else:
        write_out(f"Permission of range [{shown}, <open ended> is revoked from role {args[0]}\n")
