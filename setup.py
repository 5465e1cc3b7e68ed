"""The package's layout beyond pyproject.toml (which holds everything else).

This repository is the development home: the CDK construct lives in `infra/` and the Lambda
handlers in `functions/`. The wheel ships them inside the package, as `microprocess.cdk` and
`microprocess.functions`, so that a team's own project needs no checkout (their modules import
each other relatively, which works under both names).
"""

from setuptools import find_packages, setup

#: Package name in the wheel -> folder in this repository.
MAPPED = {"microprocess.cdk": "infra", "microprocess.functions": "functions"}

packages = find_packages(include=["microprocess", "microprocess.*"])
for name, folder in MAPPED.items():
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]

setup(packages=packages, package_dir=dict(MAPPED))
