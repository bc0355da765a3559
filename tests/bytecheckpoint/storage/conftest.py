from tests.bytecheckpoint.storage.s3server import moto_server  # noqa: F401 - fixture
