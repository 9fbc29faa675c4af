"""Print one line per failed or erroring test from a pytest JUnit XML report (CI's last words)."""
import sys
import xml.etree.ElementTree as ET

MESSAGE_CHARS = 300  # enough for the assertion's first line, short enough to keep the tail readable


def main(path: str) -> None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        print(f"ci: no test report at {path}: {exc}")
        return
    bad = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            for node in case.findall(kind):
                message = " ".join((node.get("message") or "").split())[:MESSAGE_CHARS]
                bad.append(f"{kind.upper()}: {case.get('classname')}::{case.get('name')}: {message}")
    print(f"ci: {len(bad)} failed or erroring tests" + (":" if bad else ""))
    for line in bad:
        print(line)


if __name__ == "__main__":
    main(sys.argv[1])
