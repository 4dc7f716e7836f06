#!/usr/bin/env python3
"""Lints a chart with Helm's own linter (the helm v4 library, from the helm-sdkpy wheel).

Usage: python3 helm/lint.py helm/podwall
Exit status 1 on any lint error or warning, 2 when the library is not installed.
The linter renders every template with the chart's values and checks them against
values.schema.json, so a template or values mistake fails here.
"""

import asyncio
import sys

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def main() -> int:
    chart = sys.argv[1] if len(sys.argv) > 1 else "helm/podwall"
    try:
        import helm_sdkpy
    except ImportError:
        print("helm-sdkpy is not installed: python3 -m pip install --ignore-requires-python helm-sdkpy", file=sys.stderr)
        return 2
    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(chart))
    failed = False
    for m in result.get("Messages") or []:
        severity = SEVERITY.get(m.get("Severity"), str(m.get("Severity")))
        # The library serialises Go errors as {}; the path and severity are what survive.
        print(f"{severity}: {chart}/{m.get('Path')}: {m.get('Err') or ''}")
        failed |= m.get("Severity", 0) >= 2
    if result.get("TotalChartsLinted") != 1:
        print(f"ERROR: {chart} was not linted: {result}")
        failed = True
    failed |= bool(result.get("Errors"))
    print(f"{chart}: {'FAILED' if failed else 'lint clean'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
