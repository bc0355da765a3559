from tests.bytecheckpoint.storage.s3server import moto_server, s3rver_server  # noqa: F401 - fixtures
