from pickwise_client.cli import main

main()
