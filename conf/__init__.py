"""The Hydra configs, installed as the package ``sigdet.conf`` (pyproject maps this folder there) so that an
installed wheel finds them through Hydra's ``pkg://sigdet.conf`` search path. No code lives here."""
