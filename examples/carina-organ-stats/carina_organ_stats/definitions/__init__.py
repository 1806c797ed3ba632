"""The plugin's pipeline definitions: the *.yaml files of this folder."""
