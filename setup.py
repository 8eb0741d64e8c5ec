"""Package discovery for setuptools (pyproject.toml holds everything else): every sub-package of edgeopt is found,
so a new one cannot be left out of the wheel the way a hand-written list once left out `edgeopt.inputs.data`; the
device profiles in the top-level targets/ folder ship as the package data of `edgeopt.target_profiles`."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["edgeopt", "edgeopt.*"]), "edgeopt.target_profiles"],
    package_dir={"edgeopt.target_profiles": "targets"},
)
