"""`python -m inception_jax <command>`: see `inception_jax.cli`."""

from inception_jax import cli

if __name__ == '__main__':
  cli.main()
