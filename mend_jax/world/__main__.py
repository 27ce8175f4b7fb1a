"""`python -m mend_jax.world [--seed N]`: builds (or finds) the world and says where it is."""
import argparse
import dataclasses
import time

from mend_jax.world import WorldConfig, ensure_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=WorldConfig().seed, help="seed of the generated world")
    args = parser.parse_args()
    start = time.time()
    artifacts = ensure_world(WorldConfig(seed=args.seed))
    for field in dataclasses.fields(artifacts):
        print(f"{field.name:15s} {getattr(artifacts, field.name)}")
    print(f"{'seconds':15s} {time.time() - start:.1f}")


if __name__ == "__main__":
    main()
