"""Write the golden file of every (event type, version) that has none yet; never rewrite one.

Run `python -m tests.write_golden` after adding an event or a version, and commit the new file.
"""

from pathlib import Path

from appliance.model import codec, events
from tests.event_samples import golden_name, sample_envelope

GOLDEN = Path(__file__).parent / "data" / "events"


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for cls in sorted(events.REGISTRY.values(), key=lambda c: c.TYPE):
        path = GOLDEN / golden_name(cls)
        if not path.exists():
            path.write_bytes(codec.encode(sample_envelope(cls)))
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
