"""ctbpf policy: show or change the enforce-mode policy of the running
datapath, or print it as the equivalent nft ruleset."""

import json
import sys

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "policy"
HELP = "show or set the stateful filtering policy per interface (enforce mode)"

EPILOG = """\
examples:
  ctbpf policy                                  show the policy and its verdict counters
  ctbpf policy --explain                        the same policy as an nft ruleset
  ctbpf policy set --mode enforce wan accept=established,related new=tcp/22,tcp/443 \\
        new_requires_syn=1 -- lan accept=new,established,related
  ctbpf policy set --mode observe               count verdicts, drop nothing
  ctbpf policy clear wan                        wan passes everything again
A target is IFACE (packets arriving on it) or IFACE:out (packets the host
sends out of it). Each `set` gives the whole policy of the targets it names;
the others keep theirs."""


class _Intermixed:
    """Options anywhere among the targets (`set --mode enforce wan ...`,
    `set wan ... --force -- lan ...`): plain argparse matches the positionals
    once, before the first option, and leaves the rest unrecognized."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_arguments(p) -> None:
    import argparse  # noqa: PLC0415

    p.__class__ = type("PolicyParser", (_Intermixed, type(p)), {})
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("action", nargs="?", choices=("show", "set", "clear"), default="show",
                   help="show (default), set, or clear")
    p.add_argument("items", nargs="*", metavar="ITEM",
                   help="set: TARGET KEY=VALUE ... [-- TARGET KEY=VALUE ...] with keys accept, "
                        "new, new_requires_syn, default; clear: TARGET ...")
    p.add_argument("--mode", choices=("observe", "enforce"),
                   help="set: observe (count verdicts only) or enforce (apply them); "
                        "default: keep the current mode")
    p.add_argument("--force", action="store_true",
                   help="set: allow a policy that accepts no established traffic")
    p.add_argument("--explain", action="store_true",
                   help="print the policy as an equivalent nft ruleset")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_pin_dir(p)


def _targets(items: list[str]) -> list[tuple[str, str, dict]]:
    """TARGET KEY=VALUE ... groups, split on a bare '--' or on a word with no '='."""
    from ctbpf.errors import UsageError  # noqa: PLC0415

    groups: list[tuple[str, str, dict]] = []
    for word in items:
        if word == "--":
            continue
        if "=" not in word:
            iface, _, hook = word.partition(":")
            hook = hook or "in"
            if hook not in ("in", "out") or not iface:
                raise UsageError(f"policy: {word!r} is not a target; write IFACE or IFACE:out")
            groups.append((iface, hook, {}))
            continue
        if not groups:
            raise UsageError(f"policy: {word!r} comes before any interface; write IFACE "
                             f"KEY=VALUE ...")
        key, _, value = word.partition("=")
        groups[-1][2][key] = value
    return groups


def run(args) -> int:
    from ctbpf.policy import mapio, model, nftables  # noqa: PLC0415
    from ctbpf.errors import UsageError  # noqa: PLC0415

    pin_dir = existing_pin_dir(args)
    current, _ = mapio.read(pin_dir)
    if args.action == "show":
        if args.items or args.mode or args.force:
            raise UsageError("policy show takes no targets, --mode or --force")
        return _show(pin_dir, current, args)
    wanted = model.PolicySet(args.mode or current.mode, list(current.policies))
    # Policies already in force were accepted once (with force if needed).
    forced = {p.name for p in current.policies}
    if args.action == "clear":
        if args.mode or args.force:
            raise UsageError("policy clear takes targets only")
        names = set()
        for iface, hook, keys in _targets(args.items):
            if keys:
                raise UsageError("policy clear takes targets only, no KEY=VALUE")
            names.add(f"{hook}.{iface}")
        missing = names - {p.name for p in current.policies}
        if missing:
            raise UsageError(f"policy clear: no policy for {', '.join(sorted(missing))}")
        wanted.policies = [p for p in wanted.policies if p.name not in names]
    else:
        for iface, hook, keys in _targets(args.items):
            pol, force = model.parse_interface_policy(hook, iface, keys, f"{iface}:{hook}")
            wanted.policies = [p for p in wanted.policies if p.name != pol.name] + [pol]
            forced.discard(pol.name)
            if force or args.force:
                forced.add(pol.name)
        if not args.items and not args.mode:
            raise UsageError("policy set: give --mode and/or TARGET KEY=VALUE ...")
    lines = mapio.apply(pin_dir, wanted, forced)
    print("\n".join(lines) if lines else "policy: no change")
    if args.explain:
        sys.stdout.write(nftables.to_nft(wanted))
    return 0


def _show(pin_dir, current, args) -> int:
    from ctbpf.policy import mapio, model, nftables  # noqa: PLC0415

    if args.explain:
        sys.stdout.write(nftables.to_nft(current))
        return 0
    counts = mapio.verdict_counts(pin_dir)
    if args.output == "json":
        doc = {"mode": current.mode,
               "policies": [{"interface": p.interface, "direction": p.hook,
                             "accept": [s for s in model.STATES if s in p.accept],
                             "new": [str(r) for r in p.new],
                             "new_requires_syn": p.new_requires_syn, "default": p.default}
                            for p in current.policies],
               "packets": [{"policy": n, "state": s, "verdict": v, "packets": c}
                           for n, s, v, c in counts if c]}
        print(json.dumps(doc, indent=1))
        return 0
    print(f"mode: {current.mode}" + ("" if current.mode == "enforce" else
                                     " (verdicts are counted, nothing is dropped)"))
    if not current.policies:
        print("no policy: every packet passes")
        return 0
    for p in current.policies:
        print(f"{p.interface}:{p.hook}  {nftables.describe(p)}")
        seen = [(s, v, c) for n, s, v, c in counts if n == p.name and c]
        if seen:
            print("    packets  " + "  ".join(f"{s}/{v} {c}" for s, v, c in seen))
    return 0
